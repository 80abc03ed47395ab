"""The dataset manifest, ``facesynth.json``: what a shard folder holds and how it was made.

Written last and atomically by the stage that produced the folder, so its presence means the
dataset is complete. It records the format version, the producer (stage, generator, effective
config and its hash), and per shard: file name, label range, row count and sha256.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facesynth import __version__
from facesynth.core.atomic_io import write_json_atomic
from facesynth.core.errors import ShardError
from facesynth.core.shard_format import FORMAT_NAME, FORMAT_VERSION

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
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ShardError(
                f"{path}: manifest is missing (the dataset is incomplete or not a facesynth dataset)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ShardError(f"{path}: manifest is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ShardError(f"{path}: not a facesynth manifest (format field is {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise ShardError(
                f"{path}: format version {data.get('format_version')!r} is not supported (this is v{FORMAT_VERSION})"
            )
        try:
            shards = [ShardRecord(**s) for s in data.pop("shards")]
            return cls(shards=shards, **data)
        except (TypeError, KeyError) as exc:
            raise ShardError(f"{path}: manifest fields are malformed ({exc})") from None


def manifest_exists(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()
