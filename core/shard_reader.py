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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from facesynth.core.errors import ShardError
from facesynth.core.manifest import MANIFEST_NAME, Manifest, manifest_exists, unfinished_marker
from facesynth.core.shard_format import (
    DATA_DIR,
    check_schema,
    decode_image,
    read_schema,
)

logger = logging.getLogger(__name__)

Source = str | os.PathLike


def dataset_files(source: Source, *, allow_plain: bool = False) -> list[Path]:
    """The Parquet shards of a dataset folder (see :func:`dataset_shards`), or the file itself."""
    return [file for file, _ in dataset_shards(source, allow_plain=allow_plain)]


#: (shard file, the label range [start, stop) it may hold; stop None when no manifest bounds it)
LabelledShard = tuple[Path, tuple[int, int | None]]


def dataset_shards(source: Source, *, allow_plain: bool = False) -> list[LabelledShard]:
    """The Parquet shards of a dataset folder, as its manifest lists them, or the file itself.

    A folder with a ``facesynth.json`` is read exactly as the manifest says: a listed shard that is
    missing, an unlisted one beside them, or a row count that differs is refused (``facesynth verify``
    gives the full report). A folder whose writer has not finished (working state but no manifest) is
    refused. A folder of plain Parquet shards with neither is refused with ``verify``'s message, or
    read with a warning when ``allow_plain`` (a stage's ``allow_plain_parquet`` setting) is given.
    """
    path = Path(source)
    if path.is_file():
        return [(path, (0, None))]
    if not path.exists():
        raise ShardError(f"{path}: dataset folder does not exist")
    if manifest_exists(path):
        return _manifest_files(path)
    marker = unfinished_marker(path)
    if marker is not None:
        raise ShardError(
            f"{path}: has no {MANIFEST_NAME} but holds {marker.relative_to(path)}: the dataset is still being "
            "written or its run did not finish (rerun that command to complete it)"
        )
    files = sorted((path / DATA_DIR).glob("*.parquet")) or sorted(path.glob("*.parquet"))
    if not files:
        raise ShardError(f"{path}: no Parquet shards found (expected {DATA_DIR}/train-*.parquet)")
    if not allow_plain:
        raise ShardError(
            f"{path / MANIFEST_NAME}: manifest is missing (the dataset is incomplete or not a facesynth "
            f"dataset; `facesynth verify {path}` checks it); to read a plain Parquet folder unchecked, "
            "pass --allow-plain-parquet (allow_plain_parquet: true)"
        )
    if str(path) not in _WARNED_PLAIN:
        _WARNED_PLAIN.add(str(path))
        logger.warning("%s: no %s; reading %d Parquet file(s) unchecked", path, MANIFEST_NAME, len(files))
    return [(file, (0, None)) for file in files]


_WARNED_PLAIN: set[str] = set()


def _manifest_files(folder: Path) -> list[LabelledShard]:
    manifest = Manifest.read(folder)
    hint = f"(run `facesynth verify {folder}` for the full report)"
    root = folder.resolve()
    files = []
    for record in manifest.shards:
        file = folder / record.file
        if not file.resolve().is_relative_to(root):
            raise ShardError(f"{file}: manifest entry leads outside {folder} {hint}")
        if not file.is_file():
            raise ShardError(f"{file}: listed in the manifest but missing {hint}")
        try:
            rows = pq.ParquetFile(file).metadata.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{file}: cannot read Parquet footer ({exc}) {hint}") from None
        if rows != record.num_rows:
            raise ShardError(f"{file}: {rows} rows, the manifest says {record.num_rows} {hint}")
        files.append(file)
    listed = {f.name for f in files}
    extra = sorted(p.name for p in (folder / DATA_DIR).glob("*.parquet") if p.name not in listed)
    if extra:
        raise ShardError(f"{folder}: shards not listed in the manifest: {extra[:5]} {hint}")
    return [(file, (r.label_start, r.label_stop)) for file, r in zip(files, manifest.shards, strict=True)]


def check_labels(
    file: Path, labels: pa.Array | pa.ChunkedArray, limits: tuple[int, int | None], where: str = ""
) -> None:
    """Refuse labels outside the shard's manifest range ``limits`` (or negative ones in a plain shard)."""
    if len(labels) == 0:
        return
    low, high = (v.as_py() for v in pc.min_max(labels).values())
    if low is None:
        raise ShardError(f"{file}{where}: null labels")
    start, stop = limits
    if low < start or (stop is not None and high >= stop):
        allowed = f"[{start}, {stop})" if stop is not None else "non-negative"
        raise ShardError(
            f"{file}{where}: labels {low}..{high} outside the manifest's range {allowed}; "
            "the manifest's identity count bounds the classes"
        )


def _all_shards(sources: Source | Sequence[Source], allow_plain: bool = False) -> list[LabelledShard]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    shards: list[LabelledShard] = []
    for source in sources:
        shards.extend(dataset_shards(source, allow_plain=allow_plain))
    return shards


def read_columns(
    sources: Source | Sequence[Source], columns: Sequence[str], *, allow_plain: bool = False
) -> pa.Table:
    """Read the given (non-image) columns of every shard into one Arrow table (labels checked)."""
    tables = []
    for file, limits in _all_shards(sources, allow_plain):
        schema = read_schema(file)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ShardError(f"{file}: missing columns {missing}")
        try:
            table = pq.read_table(file, columns=list(columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{file}: cannot read ({exc})") from None
        if "label" in columns:
            check_labels(file, table["label"], limits)
        tables.append(table)
    return pa.concat_tables(tables)


def sources_have_column(sources: Source | Sequence[Source], column: str, allow_plain: bool = False) -> bool:
    """Whether every shard of ``sources`` has ``column`` (for optional columns such as ``landmarks``)."""
    return all(column in read_schema(file).names for file, _ in _all_shards(sources, allow_plain))


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 (3,H,W) in [-1, 1], the input convention of every recognizer."""
    return (
        torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        .permute(2, 0, 1)
        .float()
        .div_(127.5)
        .sub_(1.0)
    )


#: what :class:`ShardDataset` yields for an image: float in [-1, 1], uint8 pixels, or the encoded JPEG
IMAGE_OUTPUTS = ("float", "uint8", "encoded")
#: the first bytes of every JPEG file (SOI marker and the next marker's 0xFF)
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class _Unit:
    file: Path
    row_group: int
    num_rows: int
    label_offset: int
    label_limits: tuple[int, int | None] = (0, None)


class ShardDataset(IterableDataset):
    """Stream rows of one or more shard datasets as dicts of tensors.

    Each item has ``image`` (float32 (3,H,W) in [-1,1]; with ``image_output="uint8"`` the uint8 (3,H,W)
    pixels, a quarter of the bytes to move between processes; with ``image_output="encoded"`` no
    ``image`` but ``image_bytes``, the stored JPEG as a 1-D uint8 tensor, for decoding elsewhere) and
    ``label`` (int64 tensor), plus any extra
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
        allow_plain: bool = False,
        image_output: str = "float",
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
        if image_output not in IMAGE_OUTPUTS:
            raise ValueError(f"image_output {image_output!r}: expected one of {IMAGE_OUTPUTS}")
        self.image_output = image_output
        self.units: list[_Unit] = []
        for source, offset in zip(sources, offsets, strict=True):
            for file, limits in dataset_shards(source, allow_plain=allow_plain):
                self.units.extend(self._file_units(file, offset, limits))
        if not self.units:
            raise ShardError(f"{[str(s) for s in sources]}: the dataset has no rows")
        # with fewer row groups than ranks some rank would get nothing: every rank then reads all
        # row groups and keeps every world_size-th row (as datasets' split_dataset_by_node does)
        self.stride_rows = len(self.units) < world_size
        if self.stride_rows and rank == 0:
            logger.info(
                "%d row group(s) for %d processes: each process reads every %d-th row instead",
                len(self.units),
                world_size,
                world_size,
            )

    def _file_units(self, file: Path, label_offset: int, limits: tuple[int, int | None]) -> list[_Unit]:
        check_schema(file, read_schema(file))
        missing = [c for c in self.columns if c not in read_schema(file).names]
        if missing:
            raise ShardError(f"{file}: missing requested columns {missing}")
        try:
            meta = pq.ParquetFile(file).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise ShardError(f"{file}: cannot read Parquet footer ({exc})") from None
        return [
            _Unit(file, i, meta.row_group(i).num_rows, label_offset, limits)
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
        if self.stride_rows:
            total, world = self.num_rows, self.world_size
            return total // world if self.even_split else (total - self.rank + world - 1) // world
        units = self._ordered_units()
        shares = [sum(u.num_rows for u in units[r :: self.world_size]) for r in range(self.world_size)]
        return min(shares) if self.even_split else shares[self.rank]

    def _rank_units(self) -> tuple[list[_Unit], dict[_Unit, int] | None]:
        """This rank's units and, when striding rows, each unit's first global row number."""
        ordered = self._ordered_units()
        if not self.stride_rows:
            return ordered[self.rank :: self.world_size], None
        starts, position = {}, 0
        for unit in ordered:
            starts[unit] = position
            position += unit.num_rows
        return ordered, starts

    def _kept(self, unit: _Unit, starts: dict[_Unit, int] | None) -> int:
        """Rows of ``unit`` this rank keeps."""
        if starts is None:
            return unit.num_rows
        first = (self.rank - starts[unit]) % self.world_size
        return max(0, (unit.num_rows - first + self.world_size - 1) // self.world_size)

    def __len__(self) -> int:
        return self.rows_per_rank()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        rank_units, starts = self._rank_units()
        my_units = rank_units[worker::num_workers]
        limit = None
        if self.even_split and self.world_size > 1:
            # deal the rank's row budget over workers in proportion to their units
            budget = self.rows_per_rank()
            totals = [
                sum(self._kept(u, starts) for u in rank_units[w::num_workers]) for w in range(num_workers)
            ]
            before = sum(totals[:worker])
            limit = max(0, min(totals[worker], budget - before))
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 7919 + self.rank * 131 + worker)
        yielded = 0
        buffer: list[dict[str, Any]] = []
        for row in self._rows(my_units, starts):
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

    def _rows(
        self, units: Sequence[_Unit], starts: dict[_Unit, int] | None = None
    ) -> Iterator[dict[str, Any]]:
        wanted = ["label", *self.columns]
        if self.decode_images:
            wanted.insert(0, "image")
        wanted = list(dict.fromkeys(wanted))
        skipped = 0
        shape: tuple[int, ...] | None = None
        for unit in units:
            try:
                table = pq.ParquetFile(unit.file).read_row_group(unit.row_group, columns=wanted)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ShardError(f"{unit.file}: cannot read row group {unit.row_group} ({exc})") from None
            check_labels(unit.file, table["label"], unit.label_limits, f" row group {unit.row_group}")
            data = table.to_pydict()
            for i in range(table.num_rows):
                if starts is not None and (starts[unit] + i) % self.world_size != self.rank:
                    continue
                item: dict[str, Any] = {
                    "label": torch.tensor(data["label"][i] + unit.label_offset, dtype=torch.int64)
                }
                if self.decode_images and self.image_output == "encoded":
                    encoded = data["image"][i]["bytes"]
                    if not encoded.startswith(JPEG_MAGIC):
                        raise ShardError(
                            f"{unit.file}: row group {unit.row_group} row {i}: the image is not a JPEG; only "
                            "JPEG is decoded on the device (use decode: workers, or shards written with "
                            "--image-format jpeg)"
                        )
                    item["image_bytes"] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
                elif self.decode_images:
                    where = f"{unit.file}: row group {unit.row_group} row {i}"
                    try:
                        pixels = decode_image(data["image"][i]["bytes"])
                    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
                        if not self.skip_bad_images:
                            raise ShardError(f"{where}: undecodable image ({exc})") from None
                        skipped += 1
                        logger.warning("%s: skipping undecodable image (%s)", where, exc)
                        continue
                    shape = shape or pixels.shape
                    if pixels.shape != shape:  # a batch cannot mix sizes: name the row here
                        raise ShardError(
                            f"{where}: image is {pixels.shape[1]}x{pixels.shape[0]}, the dataset's first is "
                            f"{shape[1]}x{shape[0]}; run `facesynth verify`"
                        )
                    if self.image_output == "uint8":
                        item["image"] = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1)
                    else:
                        item["image"] = image_to_tensor(pixels)
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
