"""Streaming reader for v1 shard folders.

:class:`ShardDataset` is a torch ``IterableDataset`` over one or more dataset folders (or Parquet
files). The unit of work is a Parquet *row group*: units are shuffled with a seeded RNG, dealt to
ranks and then to DataLoader workers, read one at a time, and passed through a seeded shuffle
buffer. Memory stays at one row group plus the buffer, whatever the dataset size.

With ``even_split=True`` (the default) every rank yields the same number of rows (the smallest
share, computed from Parquet metadata alone), so distributed training never hangs on a rank that
ran out of data early.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from facesynth.core.errors import ShardError
from facesynth.core.shard_format import DATA_DIR, check_schema, decode_image, read_schema

logger = logging.getLogger(__name__)

Source = str | os.PathLike


def dataset_files(source: Source) -> list[Path]:
    """The Parquet shards of a dataset folder (``data/*.parquet``), or the file itself."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.exists():
        raise ShardError(f"{path}: dataset folder does not exist")
    files = sorted((path / DATA_DIR).glob("*.parquet")) or sorted(path.glob("*.parquet"))
    if not files:
        raise ShardError(f"{path}: no Parquet shards found (expected {DATA_DIR}/train-*.parquet)")
    return files


def _all_files(sources: Source | Sequence[Source]) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    files: list[Path] = []
    for source in sources:
        files.extend(dataset_files(source))
    return files


def read_columns(sources: Source | Sequence[Source], columns: Sequence[str]) -> pa.Table:
    """Read the given (non-image) columns of every shard into one Arrow table."""
    tables = []
    for file in _all_files(sources):
        schema = read_schema(file)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ShardError(f"{file}: missing columns {missing}")
        try:
            tables.append(pq.read_table(file, columns=list(columns)))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{file}: cannot read ({exc})") from None
    return pa.concat_tables(tables)


def sources_have_column(sources: Source | Sequence[Source], column: str) -> bool:
    """Whether every shard of ``sources`` has ``column`` (for optional columns such as ``landmarks``)."""
    return all(column in read_schema(file).names for file in _all_files(sources))


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 (3,H,W) in [-1, 1], the input convention of every recognizer."""
    return (
        torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        .permute(2, 0, 1)
        .float()
        .div_(127.5)
        .sub_(1.0)
    )


@dataclass(frozen=True)
class _Unit:
    file: Path
    row_group: int
    num_rows: int
    label_offset: int


class ShardDataset(IterableDataset):
    """Stream rows of one or more shard datasets as dicts of tensors.

    Each item has ``image`` (float32 (3,H,W) in [-1,1]) and ``label`` (int64 tensor), plus any extra
    ``columns`` requested (``embedding`` as a float32 tensor, ``landmarks`` as a float32 (5, 2)
    tensor with NaN where unknown; others as Python values).
    ``label_offsets`` shifts each source's labels (used to mix datasets with distinct classes).
    An image that does not decode is skipped, logged with its file and row, and counted in the
    summary logged when the pass ends (``skip_bad_images=False`` raises instead).
    """

    def __init__(
        self,
        sources: Source | Sequence[Source],
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        buffer_size: int = 1000,
        columns: Sequence[str] | None = None,
        epoch: int = 0,
        even_split: bool = True,
        label_offsets: Sequence[int] | None = None,
        decode_images: bool = True,
        skip_bad_images: bool = True,
    ) -> None:
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        offsets = list(label_offsets) if label_offsets is not None else [0] * len(sources)
        if len(offsets) != len(sources):
            raise ValueError("label_offsets needs one entry per source")
        self.columns = list(columns or [])
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.buffer_size = shuffle, seed, buffer_size
        self.epoch, self.even_split, self.decode_images = epoch, even_split, decode_images
        self.skip_bad_images = skip_bad_images
        self.units: list[_Unit] = []
        for source, offset in zip(sources, offsets, strict=True):
            for file in dataset_files(source):
                self.units.extend(self._file_units(file, offset))
        if not self.units:
            raise ShardError(f"{[str(s) for s in sources]}: the dataset has no rows")

    def _file_units(self, file: Path, label_offset: int) -> list[_Unit]:
        check_schema(file, read_schema(file))
        missing = [c for c in self.columns if c not in read_schema(file).names]
        if missing:
            raise ShardError(f"{file}: missing requested columns {missing}")
        try:
            meta = pq.ParquetFile(file).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{file}: cannot read Parquet footer ({exc})") from None
        return [
            _Unit(file, i, meta.row_group(i).num_rows, label_offset)
            for i in range(meta.num_row_groups)
            if meta.row_group(i).num_rows > 0
        ]

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (call before creating the epoch's iterator)."""
        self.epoch = epoch

    @property
    def num_rows(self) -> int:
        return sum(u.num_rows for u in self.units)

    def _ordered_units(self) -> list[_Unit]:
        units = list(self.units)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(units)
        return units

    def rows_per_rank(self) -> int:
        """Rows each rank yields per epoch (the smallest rank's share when ``even_split``)."""
        units = self._ordered_units()
        shares = [sum(u.num_rows for u in units[r :: self.world_size]) for r in range(self.world_size)]
        return min(shares) if self.even_split else shares[self.rank]

    def __len__(self) -> int:
        return self.rows_per_rank()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        rank_units = self._ordered_units()[self.rank :: self.world_size]
        my_units = rank_units[worker::num_workers]
        limit = None
        if self.even_split and self.world_size > 1:
            # deal the rank's row budget over workers in proportion to their units
            budget = self.rows_per_rank()
            totals = [sum(u.num_rows for u in rank_units[w::num_workers]) for w in range(num_workers)]
            before = sum(totals[:worker])
            limit = max(0, min(totals[worker], budget - before))
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 7919 + self.rank * 131 + worker)
        yielded = 0
        buffer: list[dict[str, Any]] = []
        for row in self._rows(my_units):
            if limit is not None and yielded + len(buffer) >= limit:
                break
            if not self.shuffle:
                yielded += 1
                yield row
                continue
            buffer.append(row)
            if len(buffer) >= self.buffer_size:
                index = rng.randrange(len(buffer))
                buffer[index], buffer[-1] = buffer[-1], buffer[index]
                yielded += 1
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _rows(self, units: Sequence[_Unit]) -> Iterator[dict[str, Any]]:
        wanted = ["label", *self.columns]
        if self.decode_images:
            wanted.insert(0, "image")
        wanted = list(dict.fromkeys(wanted))
        skipped = 0
        for unit in units:
            try:
                table = pq.ParquetFile(unit.file).read_row_group(unit.row_group, columns=wanted)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ShardError(f"{unit.file}: cannot read row group {unit.row_group} ({exc})") from None
            data = table.to_pydict()
            for i in range(table.num_rows):
                item: dict[str, Any] = {
                    "label": torch.tensor(data["label"][i] + unit.label_offset, dtype=torch.int64)
                }
                if self.decode_images:
                    try:
                        item["image"] = image_to_tensor(decode_image(data["image"][i]["bytes"]))
                    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
                        where = f"{unit.file}: row group {unit.row_group} row {i}"
                        if not self.skip_bad_images:
                            raise ShardError(f"{where}: undecodable image ({exc})") from None
                        skipped += 1
                        logger.warning("%s: skipping undecodable image (%s)", where, exc)
                        continue
                for column in self.columns:
                    value = data[column][i]
                    if column == "embedding" and value is not None:
                        value = torch.tensor(value, dtype=torch.float32)
                    elif column == "landmarks":  # unknown (null) -> NaN points, so batches still collate
                        value = (
                            torch.full((5, 2), float("nan"))
                            if value is None
                            else torch.tensor(value, dtype=torch.float32)
                        )
                    item[column] = value
                yield item
        if skipped:
            logger.warning("skipped %d undecodable image(s) in this pass (see the warnings above)", skipped)
