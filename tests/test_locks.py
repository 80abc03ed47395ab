"""The output lock: one writer per folder, holder named, stale locks taken over, ranks of a job share it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from facesynth.core.locks import LockedError, acquire, check_job_lock, lock_path_for, output_lock


def test_second_writer_is_refused_with_the_holder_named(tmp_path):
    # the holder runs in another process: flock is per open file, so it must really be another one
    code = (
        "import sys, time; from facesynth.core.locks import acquire; "
        f"lock = acquire({str(tmp_path)!r}, 'generate'); print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError) as info:
            acquire(tmp_path, "ingest")
        message = str(info.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert "generate" in message and "started" in message
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = (
        "import os, signal; from facesynth.core.locks import acquire; "
        f"lock = acquire({str(tmp_path)!r}, 'generate'); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert lock_path_for(tmp_path).is_file()  # left behind by the killed holder
    lock = acquire(tmp_path, "generate")
    assert json.loads(lock_path_for(tmp_path).read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_path_for(tmp_path).exists()


def test_stale_record_without_flock_is_taken_over(tmp_path, monkeypatch):
    import facesynth.core.locks as locks

    monkeypatch.setattr(locks, "fcntl", None)  # a filesystem without flock: the pid check decides
    path = lock_path_for(tmp_path)
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    record = {"stage": "generate", "pid": int(dead.stdout), "host": socket.gethostname(), "job_id": "x"}
    path.write_text(json.dumps(record))
    acquire(tmp_path, "generate").release()
    record["pid"] = os.getppid()  # alive, another job: refused
    path.write_text(json.dumps(record))
    with pytest.raises(LockedError, match="pid"):
        acquire(tmp_path, "generate")


def test_ranks_of_one_job_share_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("FACESYNTH_JOB_ID", "job-a")
    with output_lock(tmp_path, "generate", is_main_process=True):
        check_job_lock(tmp_path)  # another rank of job-a goes on
        monkeypatch.setenv("FACESYNTH_JOB_ID", "job-b")
        with pytest.raises(LockedError, match="job-b"):
            check_job_lock(tmp_path)
    assert not lock_path_for(tmp_path).exists()


def test_file_targets_lock_beside_the_file(tmp_path):
    target = tmp_path / "bench.bin"
    with output_lock(target, "pairs", is_file=True):
        assert (tmp_path / ".bench.bin.lock").is_file()
        with pytest.raises(LockedError):
            # a second acquisition from this process opens a new file description: refused too
            acquire(target, "pairs", is_file=True)


def test_a_new_folder_with_a_dot_in_its_name_is_locked_as_a_folder(tmp_path):
    """``fr_band_0.5_0.7`` is a run folder, not a file with suffix ``.7`` (found by the ID3 ablation)."""
    target = tmp_path / "fr_band_0.5_0.7"
    with output_lock(target, "train"):
        assert (target / ".facesynth" / "writer.lock").is_file()
    assert target.is_dir()
