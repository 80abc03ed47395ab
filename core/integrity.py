"""``facesynth verify``: check a shard folder against its manifest before anyone trusts it.

Checks: the manifest parses; every listed shard exists, has its recorded sha256 and row count, a v1
schema and labels inside its recorded range (and so below the identity count); no unlisted shards
lie beside them; every image is a square PNG/JPEG of one size across the dataset (read from its
header) and decodes (all of them, or every ``image_stride``-th row for a quick look).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image as PILImage

from facesynth.core.atomic_io import sha256_file
from facesynth.core.errors import ShardError
from facesynth.core.manifest import Manifest
from facesynth.core.shard_format import (
    DATA_DIR,
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
    check_schema,
    decode_image,
    read_schema,
)


def image_header_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) read from an encoded image's header, without decoding its pixels."""
    with PILImage.open(io.BytesIO(data)) as pil:
        return str(pil.format), pil.size


def _check_images(path: Path, images: list, image_stride: int, sizes: set, problems: list[str]) -> None:
    """Every image's header (format and size, which must agree across the dataset); every
    ``image_stride``-th image decoded in full."""
    for row, cell in enumerate(images):
        try:
            data = cell["bytes"]
            fmt, size = image_header_size(data)
            if fmt not in ("PNG", "JPEG"):
                raise ValueError(f"{fmt} image, expected PNG or JPEG")
            if not MIN_IMAGE_SIDE <= size[0] == size[1] <= MAX_IMAGE_SIDE:
                raise ValueError(
                    f"{size[0]}x{size[1]} image, expected a square face of {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} px"
                )
            if row % max(1, image_stride) == 0:
                decode_image(data)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a problem to report
            problems.append(f"{path}: row {row}: image does not decode ({exc})")
            return
        sizes.add(size)
        if len(sizes) > 1:
            problems.append(f"{path}: row {row}: image is {size[0]}x{size[1]}, others are {sorted(sizes)[0]}")
            return


def _check_shard(
    folder: Path, record, image_stride: int, problems: list[str], sizes: set | None = None
) -> None:
    path = folder / record.file
    if path.is_symlink() or not path.resolve().is_relative_to(folder.resolve()):
        problems.append(f"{path}: shard is a link or leads outside the dataset folder")
        return
    if not path.is_file():
        problems.append(f"{path}: shard listed in the manifest is missing")
        return
    if sha256_file(path) != record.sha256:
        problems.append(f"{path}: sha256 differs from the manifest (file changed or corrupted)")
    try:
        check_schema(path, read_schema(path))
        table = pq.read_table(path, columns=["image", "label"])
    except ShardError as exc:
        problems.append(str(exc))
        return
    except (pa.ArrowInvalid, OSError) as exc:
        problems.append(f"{path}: cannot read ({exc})")
        return
    if table.num_rows != record.num_rows:
        problems.append(f"{path}: {table.num_rows} rows, manifest says {record.num_rows}")
    if table.num_rows:
        low, high = pc.min(table["label"]).as_py(), pc.max(table["label"]).as_py()
        if low < record.label_start or high >= record.label_stop:
            problems.append(
                f"{path}: labels {low}..{high} fall outside the recorded range "
                f"[{record.label_start}, {record.label_stop})"
            )
    _check_images(path, table["image"].to_pylist(), image_stride, set() if sizes is None else sizes, problems)


def verify_dataset(
    folder: str | Path, *, image_stride: int = 1, on_shard: Callable[[str], None] | None = None
) -> list[str]:
    """Return a list of problems (empty when the dataset is sound). Never raises on bad data."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder}: not a folder"]
    try:
        manifest = Manifest.read(folder)
    except ShardError as exc:
        return [str(exc)]
    problems: list[str] = []
    sizes: set = set()
    for record in manifest.shards:
        _check_shard(folder, record, image_stride, problems, sizes)
        if on_shard:
            on_shard(record.file)
    listed = {record.file for record in manifest.shards}
    for path in sorted((folder / DATA_DIR).glob("*.parquet")):
        if f"{DATA_DIR}/{path.name}" not in listed:
            problems.append(f"{path}: shard is not listed in the manifest")
    total = sum(r.num_rows for r in manifest.shards)
    if total != manifest.num_rows:
        problems.append(f"{folder}: manifest total {manifest.num_rows} != sum of shard rows {total}")
    return problems
