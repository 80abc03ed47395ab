"""Write small shard datasets with their manifest, as the stages do (for tests of readers and checks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facesynth.core.atomic_io import sha256_file
from facesynth.core.manifest import Manifest, ShardRecord
from facesynth.core.shard_format import DATA_DIR, ShardRow, rows_to_table, shard_name, write_shard


def face_rows(labels: Sequence[int], size: int = 112, dim: int | None = None) -> list[ShardRow]:
    """One flat-grey face per label (grey level = row number), with an embedding when ``dim``."""
    rows = []
    for i, label in enumerate(labels):
        rows.append(
            ShardRow(
                image=np.full((size, size, 3), i % 256, dtype=np.uint8),
                label=int(label),
                identity=f"id{label}",
                index=i,
                embedding=None if dim is None else np.full(dim, i, dtype=np.float32),
            )
        )
    return rows


def add_manifest(
    folder: Path, *, embedding_dim: int | None = None, num_identities: int | None = None
) -> Manifest:
    """Write the manifest of the shards already under ``folder/data`` (label ranges read from them).

    For fixtures that build a shard table by hand (a broken image, an empty shard): readers refuse a
    folder without a manifest, as they would a user's.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    records = []
    for file in sorted((folder / DATA_DIR).glob("*.parquet")):
        labels = pq.read_table(file, columns=["label"])["label"]
        low, high = (v.as_py() for v in pc.min_max(labels).values()) if len(labels) else (0, -1)
        name = f"{DATA_DIR}/{file.name}"
        records.append(ShardRecord(name, low, high + 1, len(labels), sha256_file(file)))
    manifest = Manifest(
        num_rows=sum(r.num_rows for r in records),
        num_identities=num_identities if num_identities is not None else max(r.label_stop for r in records),
        embedding_dim=embedding_dim,
        image_format="png",
        config_hash="test",
        producer={"stage": "test"},
        shards=records,
    )
    manifest.write(folder)
    return manifest


def write_dataset(
    folder: Path,
    shards: Sequence[Sequence[ShardRow]],
    *,
    embedding_dim: int | None = None,
    num_identities: int | None = None,
    row_group_size: int = 256,
) -> Manifest:
    """Write ``shards`` under ``folder/data`` and a manifest that lists them (label ranges from the rows)."""
    for index, rows in enumerate(shards):
        table = rows_to_table(list(rows), embedding_dim)
        write_shard(folder / shard_name(index, len(shards)), table, row_group_size=row_group_size)
    return add_manifest(folder, embedding_dim=embedding_dim, num_identities=num_identities)
