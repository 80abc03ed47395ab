"""The shared training-run helper, through the recognizer trainer: logs, resume, checkpoint failures."""

from __future__ import annotations

import csv
import errno
import logging
from pathlib import Path

import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.core.training_run import drop_rows_after, exact_batches
from facesynth.recognizers import trainer as trainer_module
from facesynth.recognizers.methods import RecognitionMethod, register_method
from facesynth.recognizers.trainer import train_recognizer
from facesynth.tests.recognizer_tiny import make_shards, small_config


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("faces"), num_ids=6, per_id=8)


def steps_logged(run: Path) -> list[int]:
    with (run / "train_log.csv").open(newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@register_method("test-run-aux")
class _AuxMethod(RecognitionMethod):
    """An extra loss term that differs between micro-batches (it depends on the images)."""

    def __init__(self, backbone: str, backbone_kwargs=None):
        super().__init__(backbone, backbone_kwargs)
        self.gate = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, labels=None):
        return self.backbone(images * self.gate), {"brightness": (images * self.gate).mean().abs()}


def test_logged_loss_is_the_step_mean_with_gradient_accumulation(faces, tmp_path):
    # bug: with 2 batches per step the logged terms were the last batch's while `loss` was the mean
    run = tmp_path / "acc"
    train_recognizer(
        small_config([faces], run, method="test-run-aux", gradient_accumulation_steps=2, max_steps=3)
    )
    with (run / "train_log.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        assert float(row["loss"]) == pytest.approx(
            float(row["margin_loss"]) + float(row["aux_brightness"]), rel=1e-6
        )


def test_resume_logs_each_step_once_and_a_finished_run_says_so(faces, tmp_path, caplog):
    run = tmp_path / "run"
    first = train_recognizer(small_config([faces], run, max_steps=4, checkpoint_every=2, export_onnx=False))
    assert steps_logged(run) == [1, 2, 3, 4]
    # interrupted after checkpoint-2 (steps 3 and 4 were logged, then lost): they are logged once
    import shutil

    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    again = train_recognizer(
        small_config([faces], run, max_steps=4, checkpoint_every=2, export_onnx=False, resume="latest")
    )
    assert steps_logged(run) == [1, 2, 3, 4]
    assert again.final_loss == pytest.approx(first.final_loss, rel=1e-5)
    # resuming a finished run trains nothing and says so (not "loss nan, 0.0 images/s")
    caplog.set_level(logging.INFO, logger="facesynth")
    done = train_recognizer(
        small_config([faces], run, max_steps=4, checkpoint_every=2, export_onnx=False, resume="latest")
    )
    assert done.steps == 4 and done.final_loss == pytest.approx(first.final_loss, rel=1e-5)
    assert "already finished at step 4" in caplog.text and "nan" not in caplog.text
    assert steps_logged(run) == [1, 2, 3, 4]


def test_unreadable_checkpoint_state_is_a_clear_error(faces, tmp_path):
    run = tmp_path / "run"
    train_recognizer(small_config([faces], run, max_steps=2, export_onnx=False))
    checkpoint = run / "checkpoints" / "checkpoint-2"
    rng = checkpoint / "random_states_0.pkl"
    good = rng.read_bytes()
    rng.write_bytes(good[: len(good) // 2])  # truncated: accelerate would skip it silently
    with pytest.raises(FacesynthError, match="random_states_0.pkl: unreadable RNG state"):
        train_recognizer(small_config([faces], run, max_steps=3, resume="latest"))
    rng.write_bytes(good)
    (checkpoint / "optimizer.bin").write_bytes(b"not a torch file")
    with pytest.raises(
        FacesynthError, match="checkpoint-2: checkpoint does not match this model or cannot be read"
    ):
        train_recognizer(small_config([faces], run, max_steps=3, resume="latest"))


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(faces, tmp_path, monkeypatch):
    real = trainer_module._save_partial_fc

    def full_disk(partial_fc, optimizer, path):
        if "checkpoint-4" in str(path):
            real(partial_fc, optimizer, path)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(partial_fc, optimizer, path)

    monkeypatch.setattr(trainer_module, "_save_partial_fc", full_disk)
    run = tmp_path / "run"
    with pytest.raises(FacesynthError, match="checkpoint-4: could not write the checkpoint .*No space left"):
        train_recognizer(small_config([faces], run, max_steps=6, checkpoint_every=2, export_onnx=False))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    monkeypatch.setattr(trainer_module, "_save_partial_fc", real)
    resumed = train_recognizer(
        small_config([faces], run, max_steps=6, checkpoint_every=2, export_onnx=False, resume="latest")
    )
    assert resumed.steps == 6 and steps_logged(run) == [1, 2, 3, 4, 5, 6]


def test_exact_batches_recut_worker_batches_and_drop_rows_after(tmp_path):
    loader = [{"x": torch.arange(i * 3, i * 3 + 3), "name": "skipped"} for i in range(3)]
    batches = list(exact_batches(loader, 4))
    assert [b["x"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]] and set(batches[0]) == {"x"}
    log = tmp_path / "train_log.csv"
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n")
    assert drop_rows_after(log, 2) == 1
    assert log.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.4"]


def test_a_second_writer_of_a_run_folder_is_refused_and_the_lock_is_freed_after(faces, tmp_path):
    """Issue 13.1 for training outputs: a run folder has one writer; the lock goes when the run ends."""
    from facesynth.core.locks import LockedError, acquire

    run = tmp_path / "locked"
    holder = acquire(run, "someone else")
    try:
        with pytest.raises(LockedError, match="someone else"):
            train_recognizer(small_config([faces], run, max_steps=1))
        assert not (run / "train_log.csv").exists()
    finally:
        holder.release()
    train_recognizer(small_config([faces], run, max_steps=1))
    acquire(run, "after the run").release()  # the finished run released its lock
