"""The dataset manifest, ``facesynth.json``: what a shard folder holds and how it was made.

Written last and atomically by the stage that produced the folder, so its presence means the
dataset is complete. It records the format version, the producer (stage, generator, effective
config and its hash), and per shard: file name, label range, row count and sha256.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from facesynth import __version__
from facesynth.core.atomic_io import write_json_atomic
from facesynth.core.errors import ShardError
from facesynth.core.shard_format import DATA_DIR, FORMAT_NAME, FORMAT_VERSION, IMAGE_FORMATS

MANIFEST_NAME = "facesynth.json"


@dataclass
class ShardRecord:
    """One shard: its path relative to the dataset folder, labels [label_start, label_stop), rows, sha256."""

    file: str
    label_start: int
    label_stop: int
    num_rows: int
    sha256: str


@dataclass
class Manifest:
    num_rows: int
    num_identities: int
    embedding_dim: int | None
    image_format: str
    config_hash: str
    producer: dict[str, Any]
    shards: list[ShardRecord]
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    facesynth_version: str = __version__
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        # put the identifying fields first for people reading the file
        order = ["format", "format_version", "facesynth_version", "created_at", "config_hash"]
        return {**{k: data[k] for k in order}, **{k: v for k, v in data.items() if k not in order}}

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        """Parse and validate ``folder/facesynth.json``; every malformed field is a :class:`ShardError`."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ShardError(
                f"{path}: manifest is missing (the dataset is incomplete or not a facesynth dataset)"
            )
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ShardError(f"{path}: {path.stat().st_size:,} bytes, too large for a manifest")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ShardError(f"{path}: manifest is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ShardError(
                f"{path}: not a facesynth manifest (a JSON {type(data).__name__}, not an object)"
            )
        if data.get("format") != FORMAT_NAME:
            raise ShardError(f"{path}: not a facesynth manifest (format field is {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ShardError(
                f"{path}: format version {data.get('format_version')!r} is not supported (this is v{FORMAT_VERSION})"
            )
        problems = manifest_problems(data)
        if problems:
            raise ShardError(f"{path}: manifest fields are malformed: " + "; ".join(problems[:10]))
        shards = [ShardRecord(**s) for s in data.pop("shards")]
        known = {f.name for f in fields(cls)}
        return cls(shards=shards, **{k: v for k, v in data.items() if k in known})


#: A manifest lists shards, not data: anything larger than this is not one.
MAX_MANIFEST_BYTES = 64 * 2**20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def safe_shard_path(name: Any) -> bool:
    """True for a relative ``data/<name>.parquet`` path that cannot leave the dataset folder."""
    if not isinstance(name, str) or "\\" in name or "\x00" in name:
        return False
    pure = PurePosixPath(name)
    return (
        not pure.is_absolute()
        and len(pure.parts) == 2
        and pure.parts[0] == DATA_DIR
        and pure.suffix == ".parquet"
        and not pure.parts[1].startswith(".")
    )


def manifest_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with a manifest's fields (types, ranges, shard paths), as readable lines."""
    problems: list[str] = []
    for name in ("num_rows", "num_identities"):
        if not _is_int(data.get(name)) or data[name] < 0:
            problems.append(f"{name} is {data.get(name)!r}, expected a non-negative integer")
    dim = data.get("embedding_dim")
    if dim is not None and (not _is_int(dim) or not 0 < dim <= 65536):
        problems.append(f"embedding_dim is {dim!r}, expected null or an integer in 1..65536")
    if data.get("image_format") not in IMAGE_FORMATS:
        problems.append(
            f"image_format is {data.get('image_format')!r}, expected one of {list(IMAGE_FORMATS)}"
        )
    if not isinstance(data.get("config_hash"), str):
        problems.append(f"config_hash is {data.get('config_hash')!r}, expected a string")
    if not isinstance(data.get("producer"), dict):
        problems.append(f"producer is {type(data.get('producer')).__name__}, expected an object")
    shards = data.get("shards")
    if not isinstance(shards, list):
        return [*problems, f"shards is {type(shards).__name__}, expected a list"]
    count = data.get("num_identities") if _is_int(data.get("num_identities")) else None
    seen: set[str] = set()
    for i, shard in enumerate(shards):
        where = f"shards[{i}]"
        if not isinstance(shard, dict) or set(shard) != {f.name for f in fields(ShardRecord)}:
            problems.append(f"{where} must be an object with {[f.name for f in fields(ShardRecord)]}")
            continue
        if not safe_shard_path(shard["file"]):
            problems.append(
                f"{where}.file {shard['file']!r} is not a data/<name>.parquet path inside the folder"
            )
        elif shard["file"] in seen:
            problems.append(f"{where}.file {shard['file']!r} is listed twice")
        else:
            seen.add(shard["file"])
        start, stop, rows = shard["label_start"], shard["label_stop"], shard["num_rows"]
        if not all(_is_int(v) for v in (start, stop, rows)) or not 0 <= start <= stop or rows < 0:
            problems.append(f"{where}: label range [{start!r}, {stop!r}) / num_rows {rows!r} are not valid")
        elif count is not None and stop > count:
            problems.append(f"{where}: labels up to {stop - 1} but the dataset has {count} identities")
        if not isinstance(shard["sha256"], str) or not _SHA256.fullmatch(shard["sha256"]):
            problems.append(f"{where}.sha256 is not a 64-digit hex digest")
    return problems


def manifest_exists(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


#: Files that mean a stage is (or was) writing the folder and has not finished.
UNFINISHED_MARKERS = (".facesynth/plan.json", ".facesynth/ingest_staging")


def unfinished_marker(folder: str | Path) -> Path | None:
    """The working-state file that shows ``folder`` is being written (or its writer died), if any."""
    for name in UNFINISHED_MARKERS:
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def manifest_for_shards(
    folder: Path,
    *,
    embedding_dim: int | None = None,
    num_identities: int | None = None,
    producer: str = "test",
) -> Manifest:
    """Write the manifest of the shards already under ``folder/data`` (label ranges read from them).

    For shards written outside a stage (test fixtures, benchmark scratch data): readers refuse a folder
    without a manifest, as they would a user's. ``producer`` names who wrote them.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from facesynth.core.atomic_io import sha256_file

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
        config_hash=producer,
        producer={"stage": producer},
        shards=records,
    )
    manifest.write(folder)
    return manifest


def write_shard_dataset(
    folder: Path,
    shards: Sequence[Sequence[Any]],
    *,
    embedding_dim: int | None = None,
    num_identities: int | None = None,
    row_group_size: int = 256,
    producer: str = "test",
) -> Manifest:
    """Write ``shards`` under ``folder/data`` and a manifest that lists them (label ranges from the rows)."""
    from facesynth.core.shard_format import rows_to_table, shard_name, write_shard

    for index, rows in enumerate(shards):
        table = rows_to_table(list(rows), embedding_dim)
        write_shard(folder / shard_name(index, len(shards)), table, row_group_size=row_group_size)
    return manifest_for_shards(
        folder, embedding_dim=embedding_dim, num_identities=num_identities, producer=producer
    )
