"""The training-run helper both trainers share: run folder, log, trackers, checkpoints, resume.

A trainer opens one :class:`TrainingRun` (a context manager) and keeps only its own loop. The run owns:

- the run folder, ``train_config.json`` and ``train.log`` (its log handler is removed when the run ends);
- trackers through accelerate (``init_trackers`` / ``log``): a CSV tracker always (``train_log.csv``,
  other files by name), TensorBoard too when it is installed and wanted;
- checkpoints ``checkpoints/checkpoint-<step>/`` through ``accelerator.save_state`` / ``load_state``,
  with the trainer's save/load pre-hooks (diffusers' training examples: models with ``save_pretrained``
  inside the checkpoint, EMA weights, per-process extras). A checkpoint is written to
  ``checkpoint-<step>.partial`` and renamed after its ``trainer_state.json`` (written last), so
  ``resume="latest"`` never picks a half-written one and a failed write (disk full) leaves the previous
  checkpoints intact;
- the barrier discipline: **every process calls** :meth:`save_checkpoint`, :meth:`resume` and
  :meth:`barrier` at the same points, whatever its rank (``save_state`` and barriers are collectives;
  a call on the main process only kills the run under gloo and hangs it under NCCL). Only file
  writes that must happen once are guarded by :attr:`is_main`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from facesynth.core.atomic_io import write_json_atomic
from facesynth.core.checkpoints import TRAINER_STATE, find_checkpoint, prune_checkpoints
from facesynth.core.errors import FacesynthError
from facesynth.core.locks import acquire as acquire_lock

logger = logging.getLogger(__name__)

TRAIN_LOG = "train_log.csv"
CHECKPOINTS = "checkpoints"
PARTIAL_SUFFIX = ".partial"


def checkpoint_name(step: int) -> str:
    """The one checkpoint naming scheme (older zero-padded names are still found and resumed)."""
    return f"checkpoint-{step}"


def _concat_rows(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Concatenate along rows; (B, L) padded byte tensors of different widths are padded to the wider."""
    if first.dim() == 2 and first.dtype == torch.uint8 and first.shape[1] != second.shape[1]:
        width = max(first.shape[1], second.shape[1])
        first, second = (torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (first, second))
    return torch.cat([first, second])


def exact_batches(loader: Iterable[dict[str, Any]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Re-cut the loader's worker batches into exactly ``batch_size`` rows (the remainder is dropped).

    With an IterableDataset each DataLoader worker batches its own rows, so ``drop_last`` would drop a
    partial batch per worker; merging them keeps ``rows // batch_size`` batches per epoch, which an
    exact resume (replay the epoch, skip consumed batches), Partial FC's equal-batch rule and the even
    per-rank split need. Only tensor entries (first dimension = rows) are kept. A worker batch that
    already has ``batch_size`` rows is passed on as it is (still pinned, no copy), and encoded-image
    batches of different padded widths can be joined.
    """
    pending: dict[str, torch.Tensor] | None = None
    for batch in loader:
        part = {k: v for k, v in batch.items() if torch.is_tensor(v)}
        if pending is None or next(iter(pending.values())).shape[0] == 0:
            pending = part
        else:
            pending = {k: _concat_rows(pending[k], part[k]) for k in part}
        while next(iter(pending.values())).shape[0] >= batch_size:
            yield {k: v[:batch_size] for k, v in pending.items()}
            pending = {k: v[batch_size:] for k, v in pending.items()}


class Throughput:
    """Images per second over the whole run and since the last log line, pauses excluded."""

    def __init__(self) -> None:
        self.start = self.window_start = time.perf_counter()
        self.images = self.window_images = 0

    def add(self, images: int) -> None:
        self.images += images
        self.window_images += images

    def window_rate(self) -> float:
        """Rate since the previous call (or the start); starts a new window."""
        now = time.perf_counter()
        rate = self.window_images / max(now - self.window_start, 1e-9)
        self.window_start, self.window_images = now, 0
        return rate

    def total_rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9) if self.images else 0.0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (checkpoints, evaluation, samples) does not count as training time."""
        began = time.perf_counter()
        try:
            yield
        finally:
            pause = time.perf_counter() - began
            self.start += pause
            self.window_start += pause


def drop_rows_after(path: Path, step: int) -> int:
    """Remove the rows of a CSV log whose ``step`` is above ``step`` (they will be logged again)."""
    if not path.is_file():
        return 0
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or "step" not in rows[0]:
        return 0
    column = rows[0].index("step")
    kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[column])) <= step]
    dropped = len(rows) - len(kept)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as handle:
            csv.writer(handle).writerows(kept)
        tmp.replace(path)
    return dropped


def _csv_tracker_class():
    from accelerate.tracking import GeneralTracker

    class CsvTracker(GeneralTracker):
        """accelerate tracker writing one CSV per ``file`` (header fixed by the first row written)."""

        name = "csv"
        requires_logging_directory = True
        main_process_only = True

        def __init__(self, run_dir: Path):
            super().__init__()
            self.run_dir = Path(run_dir)
            self.fields: dict[str, list[str]] = {}

        @property
        def tracker(self) -> CsvTracker:
            return self

        def store_init_configuration(self, values: dict) -> None:  # the run writes train_config.json
            pass

        def log(self, values: dict, step: int | None = None, file: str = TRAIN_LOG, **kwargs: Any) -> None:
            path = self.run_dir / file
            row = {"step": step, **values} if step is not None else dict(values)
            fields = self.fields.get(file)
            if fields is None and path.is_file() and path.stat().st_size:
                with path.open(newline="") as handle:
                    fields = next(csv.reader(handle), None)
            if fields is None:
                fields = list(row)
                with path.open("w", newline="") as handle:
                    csv.writer(handle).writerow(fields)
            self.fields[file] = fields
            with path.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore").writerow(row)

    return CsvTracker


def _tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TrainingRun:
    """One training run's folder, log, trackers and checkpoints (see the module docstring)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: Any,
        mixed_precision: str = "no",
        keep_checkpoints: int = 3,
        tensorboard: bool = False,
        log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
        **accelerator_kwargs: Any,
    ):
        from accelerate.utils import ProjectConfiguration

        from facesynth.core.accelerator import make_accelerator

        self.run_dir = Path(run_dir)
        self.keep_checkpoints = keep_checkpoints
        trackers: list[Any] = [_csv_tracker_class()(self.run_dir)]
        if tensorboard and _tensorboard_available():
            trackers.append("tensorboard")
        elif tensorboard:
            logger.debug("tensorboard is not installed; logging to CSV only")
        self.accelerator = make_accelerator(
            mixed_precision,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir)),
            log_with=trackers,
            **accelerator_kwargs,
        )
        self.is_main = self.accelerator.is_main_process
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self._handler: logging.Handler | None = None
        self._level: int | None = None
        self._lock = None
        if self.is_main:  # one writer per run folder; the job's other ranks share it (core/locks.py)
            self._lock = acquire_lock(self.run_dir, f"train ({type(config).__name__})")
            package = logging.getLogger("facesynth")
            self._handler = logging.FileHandler(self.run_dir / "train.log")
            self._handler.setFormatter(logging.Formatter(log_format))
            self._handler.setLevel(logging.INFO)
            package.addHandler(self._handler)
            if package.getEffectiveLevel() > logging.INFO:
                self._level = package.level
                package.setLevel(logging.INFO)
            write_json_atomic(self.run_dir / "train_config.json", config.to_json_dict())
        self.accelerator.init_trackers("tensorboard")

    # ------------------------------------------------------------------------------ lifetime
    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Finish the trackers and remove the log handler (safe to call twice).

        Not ``accelerator.end_training()``: that also destroys the process group, which a later stage
        of the same ``torchrun`` job (``facesynth run``) still needs.
        """
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._handler is not None:
            package = logging.getLogger("facesynth")
            package.removeHandler(self._handler)
            self._handler.close()
            self._handler = None
            if self._level is not None:
                package.setLevel(self._level)

    def barrier(self) -> None:
        """Wait for every process (every process must call this at the same point)."""
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------ logging
    def log(self, values: dict[str, Any], step: int, file: str = TRAIN_LOG) -> None:
        """One row to every tracker (main process only; the other processes' calls do nothing)."""
        self.accelerator.log(values, step=step, log_kwargs={"csv": {"file": file}})

    # ------------------------------------------------------------------------------ checkpoints
    def register_hooks(self, save: Callable[..., None] | None, load: Callable[..., None] | None) -> None:
        """accelerate save/load pre-hooks ``(models, weights_or_None, folder)``, run on every process."""
        if save is not None:
            self.accelerator.register_save_state_pre_hook(save)
        if load is not None:
            self.accelerator.register_load_state_pre_hook(load)

    def _all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every process (a collective: every process calls it)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.accelerator.device)
        return float(self.accelerator.reduce(flag, reduction="sum").item()) == 0.0

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``checkpoint-<step>`` (every process calls this); ``state`` goes to trainer_state.json.

        A write that fails on any process (disk full, permissions) removes the partial folder on the
        main process and raises :class:`FacesynthError` on all of them; earlier checkpoints are untouched.
        """
        folder = self.run_dir / CHECKPOINTS / checkpoint_name(step)
        partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
        if self.is_main and partial.exists():
            shutil.rmtree(partial)
        self.barrier()
        error: BaseException | None = None
        try:
            self.accelerator.save_state(str(partial))
        except OSError as exc:
            error = exc
        if self._all_ok(error is None) and self.is_main:
            try:
                write_json_atomic(partial / TRAINER_STATE, {**state, "step": step, "world_size": self.world})
                if folder.exists():
                    shutil.rmtree(folder)
                partial.rename(folder)
                prune_checkpoints(folder.parent, self.keep_checkpoints)
            except OSError as exc:
                error = exc
        if not self._all_ok(error is None):
            if self.is_main:
                shutil.rmtree(partial, ignore_errors=True)
            reason = f" ({error})" if error is not None else " (on another process)"
            raise FacesynthError(
                f"{folder}: could not write the checkpoint{reason}; earlier checkpoints are intact "
                "(free disk space, then resume with --resume latest)"
            )
        return folder

    def resume(
        self, spec: str | None, expect: dict[str, tuple[Any, str]] | None = None
    ) -> dict[str, Any] | None:
        """Load the checkpoint ``spec`` names ('latest' or a folder) into the prepared objects.

        Returns its trainer state (plus ``"checkpoint"``: the folder), or None when there is nothing to
        resume. Every process calls this. Unreadable model, optimizer or RNG state is a
        :class:`FacesynthError` naming the file (accelerate would skip unreadable RNG state silently, and
        a resumed run would then not be exact). The main process drops log rows past the checkpoint's
        step, so no step is logged twice.
        """
        if not spec:
            return None
        checkpoint = find_checkpoint(self.run_dir, spec)
        if checkpoint is None:
            logger.info("no checkpoint in %s; starting a new run", self.run_dir / CHECKPOINTS)
            return None
        try:
            state = json.loads((checkpoint / TRAINER_STATE).read_text())
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise ValueError("expected a JSON object with an integer 'step'")
        except (OSError, ValueError) as exc:
            raise FacesynthError(f"{checkpoint / TRAINER_STATE}: unreadable trainer state ({exc})") from None
        for key, (value, label) in {**(expect or {}), "world_size": (self.world, "process(es)")}.items():
            saved = state.get(key, value)
            if saved != value:
                raise FacesynthError(
                    f"{checkpoint}: checkpoint has {saved} {label}; this run has {value} "
                    "(resume needs the same data, model and process count)"
                )
        self._check_rng_state(checkpoint)
        try:
            self.accelerator.load_state(str(checkpoint))
        except FacesynthError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable or mismatching state file
            raise FacesynthError(
                f"{checkpoint}: checkpoint does not match this model or cannot be read "
                f"({type(exc).__name__}: {exc})"
            ) from None
        if self.is_main:
            for path in self.run_dir.glob("*_log.csv"):
                drop_rows_after(path, state["step"])
        logger.info("resumed from %s at step %d", checkpoint, state["step"])
        return {**state, "checkpoint": checkpoint}

    def _check_rng_state(self, checkpoint: Path) -> None:
        from accelerate.utils import load

        path = checkpoint / f"random_states_{self.rank}.pkl"
        try:
            states = load(path)
            if not isinstance(states, dict) or "torch_manual_seed" not in states:
                raise ValueError("not an accelerate RNG state")
        except Exception as exc:  # noqa: BLE001 - missing, truncated or foreign file
            raise FacesynthError(
                f"{path}: unreadable RNG state ({type(exc).__name__}: {exc}); the resumed run would not "
                "be exact. Resume from an earlier checkpoint or start a new run"
            ) from None
