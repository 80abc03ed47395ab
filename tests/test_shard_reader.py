"""The streaming reader: every row once, split by rank and worker, seeded, never all in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facesynth.core.errors import ShardError
from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.core.shard_reader import ShardDataset, read_columns
from facesynth.tests.shard_fixtures import add_manifest


@pytest.fixture
def dataset(tmp_path):
    """3 shards x 20 rows in row groups of 7; pixel value encodes the global row id."""
    for s in range(3):
        rows = [
            ShardRow(
                image=np.full((112, 112, 3), s * 20 + i, dtype=np.uint8),
                label=s * 10 + i // 2,
                identity=f"id{s * 10 + i // 2}",
                index=i % 2,
                embedding=np.full(4, s * 20 + i, dtype=np.float32),
            )
            for i in range(20)
        ]
        write_shard(tmp_path / shard_name(s, 3), rows_to_table(rows, 4), row_group_size=7)
    add_manifest(tmp_path, embedding_dim=4)
    return tmp_path


def _row_ids(items) -> list[int]:
    return [int(round((float(item["image"][0, 0, 0]) + 1) * 127.5)) for item in items]


def test_every_row_once_with_decoded_images(dataset):
    items = list(ShardDataset(dataset, columns=["embedding", "identity"], buffer_size=5, seed=1))
    assert sorted(_row_ids(items)) == list(range(60))
    first = items[0]
    assert first["image"].shape == (3, 112, 112) and first["image"].dtype == torch.float32
    assert first["image"].min() >= -1.0 and first["image"].max() <= 1.0
    assert first["embedding"].shape == (4,)
    assert first["identity"] == f"id{int(first['label'])}"


def test_shuffle_is_seeded_and_epoch_dependent(dataset):
    a = _row_ids(ShardDataset(dataset, seed=3, buffer_size=8))
    b = _row_ids(ShardDataset(dataset, seed=3, buffer_size=8))
    c = _row_ids(ShardDataset(dataset, seed=3, buffer_size=8, epoch=1))
    assert a == b and a != c and a != sorted(a)
    assert _row_ids(ShardDataset(dataset, shuffle=False)) == list(range(60))


def test_ranks_are_disjoint_and_even(dataset):
    parts = [_row_ids(ShardDataset(dataset, rank=r, world_size=2, buffer_size=4)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(ShardDataset(dataset, rank=0, world_size=2))
    assert not set(parts[0]) & set(parts[1])
    uneven = [_row_ids(ShardDataset(dataset, rank=r, world_size=2, even_split=False)) for r in range(2)]
    assert sorted(uneven[0] + uneven[1]) == list(range(60))


def test_dataloader_workers_split_rows(dataset):
    loader = torch.utils.data.DataLoader(ShardDataset(dataset, buffer_size=4), batch_size=16, num_workers=2)
    seen = [i for batch in loader for i in ((batch["image"][:, 0, 0, 0] + 1) * 127.5).round().int().tolist()]
    assert sorted(seen) == list(range(60))


def test_label_offsets_mix_datasets(dataset):
    items = list(ShardDataset([dataset, dataset], label_offsets=[0, 30], shuffle=False))
    labels = sorted(int(i["label"]) for i in items)
    assert labels[0] == 0 and labels[-1] == 59 and len(labels) == 120


def test_read_columns_and_errors(dataset, tmp_path_factory):
    table = read_columns(dataset, ["label", "embedding"])
    assert table.num_rows == 60
    with pytest.raises(ShardError, match="missing columns"):
        read_columns(dataset, ["nope"])
    with pytest.raises(ShardError, match="does not exist"):
        ShardDataset(tmp_path_factory.mktemp("x") / "missing")
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ShardError, match="no Parquet shards"):
        ShardDataset(empty)


def test_undecodable_image_is_skipped_and_logged_or_raised(tmp_path, caplog):
    rows = [
        ShardRow(image=np.full((112, 112, 3), i, np.uint8), label=i, identity=str(i), index=0)
        for i in range(4)
    ]
    table = rows_to_table(rows, None)
    images = table["image"].to_pylist()
    images[2] = {"bytes": b"\x89PNG broken", "path": None}
    import pyarrow as pa

    table = table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type))
    write_shard(tmp_path / shard_name(0, 1), table)
    add_manifest(tmp_path)
    with caplog.at_level("WARNING"):
        labels = sorted(int(item["label"]) for item in ShardDataset(tmp_path, shuffle=False))
    assert labels == [0, 1, 3]
    assert "row 2: skipping undecodable image" in caplog.text and "skipped 1 undecodable" in caplog.text
    with pytest.raises(ShardError, match="row 2: undecodable image"):
        list(ShardDataset(tmp_path, shuffle=False, skip_bad_images=False))


def test_one_row_group_is_strided_over_ranks(tmp_path, caplog):
    """Issue 12 bug 6: fewer row groups than ranks -> every rank strides rows, and says so."""
    from facesynth.tests.shard_fixtures import face_rows, write_dataset

    write_dataset(tmp_path, [face_rows(range(9))])
    with caplog.at_level("INFO", logger="facesynth.core.shard_reader"):
        parts = [ShardDataset(tmp_path, rank=r, world_size=2, shuffle=False) for r in range(2)]
    assert "every 2-th row" in caplog.text
    rows = [[int(round((float(i["image"][0, 0, 0]) + 1) * 127.5)) for i in part] for part in parts]
    assert rows == [[0, 2, 4, 6], [1, 3, 5, 7]] and len(parts[0]) == 4
    uneven = [list(ShardDataset(tmp_path, rank=r, world_size=2, even_split=False)) for r in range(2)]
    assert [len(u) for u in uneven] == [5, 4]


def test_mixed_image_sizes_are_named_by_the_reader(tmp_path):
    from facesynth.tests.shard_fixtures import face_rows, write_dataset

    write_dataset(tmp_path, [face_rows([0, 1], size=112) + face_rows([2, 3], size=1)])
    with pytest.raises(ShardError, match=r"row 2: image is 1x1, the dataset's first is 112x112"):
        list(ShardDataset(tmp_path, shuffle=False))
