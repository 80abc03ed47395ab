"""Training checkpoints shared by every trainer: ``RUN/checkpoints/checkpoint-<step>/``.

A checkpoint counts only once its ``trainer_state.json`` exists (trainers write it last, in a
temporary folder that is renamed into place), so ``--resume latest`` never picks a half-written one.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from facesynth.core.errors import FacesynthError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def _numbered(folder: Path, complete_only: bool) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    return sorted(
        (int(m.group(1)), path)
        for path in folder.iterdir()
        if (m := CHECKPOINT_PATTERN.match(path.name))
        and (not complete_only or (path / TRAINER_STATE).is_file())
    )


def find_checkpoint(run_dir: Path, spec: str) -> Path | None:
    """The checkpoint folder ``spec`` names ('latest' -> the highest complete one, or None)."""
    if spec != "latest":
        path = Path(spec)
        if not (path / TRAINER_STATE).is_file():
            raise FacesynthError(f"{path}: not a complete checkpoint (no {TRAINER_STATE})")
        return path
    found = _numbered(Path(run_dir) / "checkpoints", complete_only=True)
    return found[-1][1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` highest-numbered checkpoints in ``folder``."""
    for _, path in _numbered(Path(folder), complete_only=False)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
