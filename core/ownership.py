"""Which files in an output folder facesynth wrote, so it never overwrites a user's own file.

A stage that writes a file with a common name (``README.md``) records it in
``.facesynth/written.json`` with its sha256. Overwriting is allowed when the file is absent, is
recorded with its current checksum, or (for folders made before the record existed) is a card
whose YAML front matter carries the ``facesynth`` tag.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from facesynth.core.atomic_io import atomic_write, sha256_file, write_json_atomic
from facesynth.core.errors import FacesynthError

RECORD = ".facesynth/written.json"
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)


def _records(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _legacy_facesynth_card(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:20_000]
    except OSError:
        return False
    match = _FRONT_MATTER.match(text)
    return bool(match and re.search(r"^\s*-\s*facesynth\s*$", match.group(1), re.M))


def written_by_facesynth(path: str | os.PathLike) -> bool:
    """True when ``path`` is absent or is a file facesynth wrote (and nobody changed since)."""
    path = Path(path)
    if not path.exists():
        return True
    if not path.is_file() or path.is_symlink():
        return False
    recorded = _records(path.parent).get(path.name)
    if recorded is not None:
        return recorded == sha256_file(path)
    return _legacy_facesynth_card(path)


def check_may_write(path: str | os.PathLike) -> None:
    """Raise :class:`FacesynthError` when writing ``path`` would replace a file facesynth did not write."""
    if not written_by_facesynth(path):
        raise FacesynthError(
            f"{path}: exists and was not written by facesynth; refusing to overwrite it "
            "(move or rename it, then run again)"
        )


@contextlib.contextmanager
def owned_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """:func:`atomic_write` that refuses a foreign file and records what it wrote."""
    path = Path(path)
    check_may_write(path)
    with atomic_write(path) as handle:
        yield handle
    folder = path.parent
    records = _records(folder)
    records[path.name] = sha256_file(path)
    (folder / RECORD).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / RECORD, records)
