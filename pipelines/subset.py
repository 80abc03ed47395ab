"""The ``subset`` stage: a range of a shard dataset's identities as a new shard dataset.

Real datasets come as one folder; an experiment needs training identities and held-out ones
(ORL s1-s30 to train, s31-s40 to verify). The rows whose label is in ``[label_start, label_stop)``
are copied shard by shard (images untouched), relabelled from 0, with a new manifest.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from facesynth.core.atomic_io import config_hash, sha256_file
from facesynth.core.config import StageConfig
from facesynth.core.errors import ShardError
from facesynth.core.manifest import Manifest, ShardRecord
from facesynth.core.shard_format import DATA_DIR, embedding_dim_of, shard_name, write_shard
from facesynth.core.shard_reader import dataset_files


class SubsetConfig(StageConfig):
    """Which identities (by label) to keep."""

    dataset: Path
    out: Path
    label_start: int = Field(default=0, ge=0)
    label_stop: int | None = Field(default=None, gt=0, description="exclusive; None: to the last label")

    @model_validator(mode="after")
    def _range(self) -> SubsetConfig:
        if self.label_stop is not None and self.label_stop <= self.label_start:
            raise ValueError(f"label_stop {self.label_stop} must be above label_start {self.label_start}")
        return self


def write_subset(config: SubsetConfig) -> Manifest:
    """Copy the selected identities into ``config.out`` (shards + manifest); returns the manifest."""
    files = dataset_files(config.dataset)
    stop = config.label_stop if config.label_stop is not None else 2**62
    tables = []
    for file in files:
        table = pq.read_table(file)
        keep = pc.and_(pc.greater_equal(table["label"], config.label_start), pc.less(table["label"], stop))
        table = table.filter(keep)
        if table.num_rows:
            labels = pc.subtract(table["label"], config.label_start)
            tables.append(table.set_column(table.schema.get_field_index("label"), "label", labels))
    if not tables:
        raise ShardError(
            f"{config.dataset}: no rows with labels in [{config.label_start}, {config.label_stop})"
        )
    (config.out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    records = []
    for index, table in enumerate(tables):
        name = shard_name(index, len(tables))
        write_shard(config.out / name, table.replace_schema_metadata(tables[0].schema.metadata))
        labels = table["label"]
        records.append(
            ShardRecord(
                name,
                int(pc.min(labels).as_py()),
                int(pc.max(labels).as_py()) + 1,
                table.num_rows,
                sha256_file(config.out / name),
            )
        )
    source = Manifest.read(config.dataset)
    manifest = Manifest(
        num_rows=sum(r.num_rows for r in records),
        num_identities=max(r.label_stop for r in records),
        embedding_dim=embedding_dim_of(tables[0].schema),
        image_format=source.image_format,
        config_hash=config_hash({"source": source.config_hash, "start": config.label_start, "stop": stop}),
        producer={"stage": "subset", "source": str(config.dataset), "source_producer": source.producer},
        shards=records,
    )
    manifest.write(config.out)
    return manifest
