"""Write small shard datasets with their manifest, as the stages do (for tests of readers and checks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facesynth.core.manifest import Manifest, manifest_for_shards, write_shard_dataset
from facesynth.core.shard_format import ShardRow


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
    """The manifest of the shards already under ``folder/data`` (see core.manifest.manifest_for_shards)."""
    return manifest_for_shards(folder, embedding_dim=embedding_dim, num_identities=num_identities)


def write_dataset(folder: Path, shards: Sequence[Sequence[ShardRow]], **kwargs) -> Manifest:
    """Write ``shards`` and their manifest (see core.manifest.write_shard_dataset)."""
    return write_shard_dataset(folder, shards, **kwargs)
