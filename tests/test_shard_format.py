"""Shard format v1: schema, atomic writes, and that `datasets` sees the real features."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from facesynth.core.errors import ShardError
from facesynth.core.shard_format import (
    ShardRow,
    check_schema,
    decode_image,
    embedding_dim_of,
    read_schema,
    rows_to_table,
    shard_name,
    write_shard,
)


def _rows(n: int, dim: int | None = 4) -> list[ShardRow]:
    rng = np.random.default_rng(0)
    return [
        ShardRow(
            image=rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
            label=i // 2,
            identity=f"id-{i // 2}",
            index=i % 2,
            seed=i,
            embedding=None if dim is None else rng.normal(size=dim),
            attributes={"yaw": 10.0, "pitch": -5.0, "roll": 1.0, "age": 30.0} if i % 3 else None,
            anchor_cos=0.8 if dim else None,
        )
        for i in range(n)
    ]


def test_shard_name_matches_hub_convention():
    assert shard_name(17, 42) == "data/train-00017-of-00042.parquet"


def test_load_dataset_sees_image_and_typed_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows(6)
    write_shard(tmp_path / shard_name(0, 1), rows_to_table(rows, 4))
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["embedding"].length == 4
    assert ds["label"] == [0, 0, 1, 1, 2, 2]
    image = ds[1]["image"]
    assert image.size == (112, 112) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), rows[1].image)  # PNG is lossless
    assert ds[0]["attributes"] is None and ds[1]["attributes"]["yaw"] == 10.0


def test_embedding_width_is_enforced():
    rows = _rows(2)
    rows[1].embedding = np.zeros(3)
    with pytest.raises(ShardError, match="3-d embedding, expected 4"):
        rows_to_table(rows, 4)


def test_schema_without_embedding(tmp_path):
    path = tmp_path / "x.parquet"
    write_shard(path, rows_to_table(_rows(2, dim=None), None))
    schema = read_schema(path)
    assert embedding_dim_of(schema) is None
    check_schema(path, schema)


def test_jpeg_round_trip_is_close(tmp_path):
    rows = _rows(1)
    rows[0].image = np.full((112, 112, 3), 128, dtype=np.uint8)
    path = tmp_path / "j.parquet"
    write_shard(path, rows_to_table(rows, 4, image_format="jpeg"))
    data = pq.read_table(path)["image"][0].as_py()["bytes"]
    assert data[:2] == b"\xff\xd8"
    assert np.abs(decode_image(data).astype(int) - 128).max() <= 2


def test_write_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / shard_name(0, 1)
    write_shard(path, rows_to_table(_rows(2), 4))
    before = path.read_bytes()

    def crash_half_way(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half a shard")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, rows_to_table(_rows(4), 4))
    assert path.read_bytes() == before  # the old shard survives untouched
    assert not list(path.parent.glob(".*.tmp"))  # and no temporary file is left behind


def test_foreign_parquet_is_refused(tmp_path):
    import pyarrow as pa

    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), path)
    with pytest.raises(ShardError, match="not a facesynth v1 shard"):
        check_schema(path, read_schema(path))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    with pytest.raises(ShardError, match="not a readable Parquet file"):
        read_schema(junk)
