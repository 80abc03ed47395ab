"""One writer per output: an exclusive lock on the folder (or file) a stage writes.

Two ``generate`` runs with different settings into one ``--out`` would otherwise interleave their
shards and manifests. Every writing stage takes :func:`output_lock` before it creates anything; a
second writer is refused with a message naming the holder (stage, pid, host, start time).

The lock is a ``flock`` on a small JSON file that names the holder. The kernel drops a ``flock``
when its process dies, so the lock of a killed run is taken over by the next one. Where ``flock``
is unavailable (some network filesystems) the holder's pid is checked instead: a lock whose pid no
longer runs on this host is stale and taken over.

Ranks of one distributed job share the job's lock: the main process takes it, recording the job id
(:func:`job_id`); the other ranks call :func:`check_job_lock` after the job's first barrier and go on
only if the holder is their own job.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facesynth.core.errors import FacesynthError

try:  # POSIX; on other systems the pid check below is the only guard
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "writer.lock"
STATE_DIR = ".facesynth"
JOB_ENV = "FACESYNTH_JOB_ID"


class LockedError(FacesynthError):
    """Another process is writing the same output."""


def lock_path_for(target: str | os.PathLike, is_file: bool = False) -> Path:
    """Where the lock of ``target`` lives: ``<folder>/.facesynth/writer.lock``, or ``.<file>.lock`` beside a
    file output (``is_file``: said by the caller, never guessed from a dot in the name)."""
    target = Path(target)
    if is_file:
        return target.with_name(f".{target.name}.lock")
    return target / STATE_DIR / LOCK_NAME


def job_id() -> str:
    """An id shared by every rank of one launch: ``FACESYNTH_JOB_ID``, torchrun's run id and rendezvous, or the pid."""
    if os.environ.get(JOB_ENV):
        return os.environ[JOB_ENV]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    master = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if run_id or all(master):
        return f"torch:{run_id}:{master[0]}:{master[1]}"
    return f"pid:{socket.gethostname()}:{os.getpid()}"


def _holder_record(stage: str) -> dict[str, Any]:
    return {
        "stage": stage,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "job_id": job_id(),
    }


def read_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or None when absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (holder not recorded)"
    return (
        f"{holder.get('stage', '?')} (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"started {holder.get('started_at', '?')})"
    )


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _holder_is_stale(holder: dict[str, Any] | None) -> bool:
    """A holder on this host whose pid no longer runs (unknown or foreign-host holders are not stale)."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    return not _pid_alive(holder.get("pid"))


class OutputLock:
    """An acquired lock; :meth:`release` (or leaving :func:`output_lock`) frees it."""

    def __init__(self, path: Path, fd: int, holder: dict[str, Any]):
        self.path, self._fd, self.holder = path, fd, holder

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            if read_holder(self.path) == self.holder:
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing drops the flock
        self._fd = -1


def _refuse(target: Path, path: Path) -> LockedError:
    return LockedError(
        f"{target}: {describe_holder(read_holder(path))} is writing here (lock {path}); "
        "wait for it to finish or use another output"
    )


def acquire(target: str | os.PathLike, stage: str, is_file: bool = False) -> OutputLock:
    """Take the exclusive write lock of ``target`` or raise :class:`LockedError` naming the holder."""
    target = Path(target)
    path = lock_path_for(target, is_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FacesynthError(
            f"{target}: output folder is not writable (cannot create {path.parent}: {exc.strerror or exc})"
        ) from None
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FacesynthError(
                f"{target}: output folder is not writable (cannot create {path}: {exc.strerror or exc})"
            ) from None
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise _refuse(target, path) from None
                # flock unsupported here: fall back to the pid check
        if not locked:
            holder = read_holder(path)
            if holder and not _holder_is_stale(holder) and holder.get("job_id") != job_id():
                os.close(fd)
                raise _refuse(target, path)
        # the file may have been removed by a releasing holder between our open and flock: retry
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        holder = _holder_record(stage)
        data = (json.dumps(holder) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        return OutputLock(path, fd, holder)
    raise LockedError(f"{target}: could not take the write lock {path} (it keeps changing hands)")


@contextlib.contextmanager
def output_lock(
    target: str | os.PathLike, stage: str, *, is_main_process: bool = True, is_file: bool = False
) -> Iterator[None]:
    """Hold ``target``'s lock for the block; non-main ranks take nothing (see :func:`check_job_lock`)."""
    if not is_main_process:
        yield
        return
    lock = acquire(target, stage, is_file)
    try:
        yield
    finally:
        lock.release()


def check_job_lock(target: str | os.PathLike) -> None:
    """On a non-main rank: raise unless ``target``'s lock is held by this rank's own job."""
    path = lock_path_for(target)
    holder = read_holder(path)
    if not holder or holder.get("job_id") != job_id():
        raise LockedError(
            f"{target}: this rank's job {job_id()} does not hold the write lock ({describe_holder(holder)})"
        )
