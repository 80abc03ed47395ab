"""Recognizer trainer: outputs, exact resume, mixed folders, method aux losses, CLI and bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from facesynth.core.errors import ConfigError, FacesynthError, ShardError
from facesynth.core.shard_format import arrow_schema, shard_name, write_shard
from facesynth.pipelines.cli import main as cli_main
from facesynth.recognizers.backbones import load_backbone
from facesynth.recognizers.methods import RecognitionMethod, load_method, register_method
from facesynth.recognizers.trainer import RecognizerTrainConfig, lr_at, resolve_sources, train_recognizer
from facesynth.tests.cli_processes import run_cli
from facesynth.tests.recognizer_tiny import make_shards, small_config
from facesynth.tests.shard_fixtures import add_manifest


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads on a shared CPU are much slower than one
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("faces"), num_ids=6, per_id=8)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_lr_schedule_warmup_then_linear_decay():
    assert lr_at(0, 0.1, 100, 0) == pytest.approx(0.1)
    assert lr_at(50, 0.1, 100, 0) == pytest.approx(0.05)
    assert lr_at(0, 0.1, 100, 10) == pytest.approx(0.01)
    assert lr_at(9, 0.1, 100, 10) == pytest.approx(0.1)
    assert lr_at(55, 0.1, 100, 10) == pytest.approx(0.05)


def test_train_writes_weights_logs_and_checkpoints(faces, tmp_path):
    out = tmp_path / "run"
    result = train_recognizer(small_config([faces], out, epochs=2, checkpoint_every=3, keep_checkpoints=2))
    assert result.steps == 12 and result.num_classes == 6  # 48 rows // 8 per step, two epochs
    assert result.images_per_second > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-9"]
    rows = read_csv(out / "train_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert {"lr", "loss", "margin_loss", "images_per_s"} <= set(rows[0])
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])
    backbone = load_backbone(out)
    assert backbone.fc.in_features == 128 * 2 * 2
    assert json.loads((out / "backbone_config.json").read_text())["backbone"] == "tiny"
    method = load_method(out)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(method.embed(x), backbone(x))
    # the ONNX export written next to the weights gives the same (normalised) embeddings
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    backbone.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(backbone(x), dim=1)
    torch.testing.assert_close(torch.nn.functional.normalize(onnx_out, dim=1), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("accumulate, steps", [(1, 12), (2, 6)])
def test_resume_is_exact(faces, tmp_path, accumulate, steps):
    # 48 rows, batch 8: 6 optimizer steps per epoch, or 3 with two batches per step; checkpoint 5
    # falls mid-epoch either way, so resuming replays the data order and skips consumed batches
    settings = dict(
        epochs=2,
        checkpoint_every=5,
        sample_rate=0.5,
        optimizer="sgd",
        seed=3,
        gradient_accumulation_steps=accumulate,
        export_onnx=False,
    )
    full = tmp_path / "full"
    train_recognizer(small_config([faces], full, **settings))
    # a run interrupted after step 5: only its checkpoint-5 exists; resume it
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "checkpoint-5", cut / "checkpoints" / "checkpoint-5")
    result = train_recognizer(small_config([faces], cut, resume="latest", **settings))
    assert result.steps == steps
    a, b = load_backbone(full).state_dict(), load_backbone(cut).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    pfc = "partial_fc-rank00000-of-00001.safetensors"
    from safetensors.torch import load_file

    torch.testing.assert_close(
        load_file(full / "checkpoints" / f"checkpoint-{steps}" / pfc)["weight"],
        load_file(cut / "checkpoints" / f"checkpoint-{steps}" / pfc)["weight"],
    )


def test_mixed_folders_get_distinct_classes(faces, tmp_path):
    other = make_shards(tmp_path / "other", num_ids=3, per_id=8, seed=1)
    sources, offsets, classes = resolve_sources([str(faces), str(other)])
    assert offsets == [0, 6] and classes == 9
    result = train_recognizer(small_config([faces, other], tmp_path / "mix", max_steps=2, optimizer="adamw"))
    assert result.num_classes == 9 and result.steps == 2


@register_method("test-aux")
class _AuxMethod(RecognitionMethod):
    """A method with an extra loss term, to check that the trainer adds and logs it."""

    def __init__(self, backbone: str, backbone_kwargs=None, weight: float = 0.5):
        super().__init__(backbone, backbone_kwargs)
        self.weight = weight
        self.gate = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, labels=None):
        embeddings = self.backbone(images * self.gate)
        return embeddings, {"gate_l2": self.weight * (self.gate - 2.0).pow(2).sum()}


def test_runs_with_different_mixed_precision_share_a_process(faces, tmp_path):
    # accelerate's process-wide state refuses a second Accelerator with another precision unless reset
    for precision in ("bf16", "no"):
        result = train_recognizer(
            small_config(
                [faces], tmp_path / precision, mixed_precision=precision, max_steps=1, export_onnx=False
            )
        )
        assert result.steps == 1


@pytest.mark.slow
def test_two_cpu_processes_under_torchrun_train_one_model(faces, tmp_path):
    # without an accelerator, accelerate must be told cpu=True or torchrun's ranks never join a group
    run = tmp_path / "run"
    done = run_cli(
        "train-recognizer",
        *("--data", str(faces), "--out", str(run), "--backbone", "tiny", "--input-size", "32"),
        *("--batch-size", "8", "--max-steps", "3", "--gradient-accumulation-steps", "2"),
        *("--checkpoint-every", "2"),  # the final save (step 3) is off a checkpoint boundary
        *("--sample-rate", "0.5", "--num-workers", "0", "--log-every", "1"),
        *("--no-progress", "--no-tensorboard", "--no-export-onnx"),
        nproc=2,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es), batch 8 each x 2 accumulation step(s)" in (run / "train.log").read_text()
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # one writer: the main process
    # Partial FC shards the class centres: one file per rank
    names = sorted(p.name for p in (run / "checkpoints" / "checkpoint-3").glob("partial_fc-*"))
    assert names == ["partial_fc-rank00000-of-00002.safetensors", "partial_fc-rank00001-of-00002.safetensors"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert load_backbone(run) is not None and load_method(run).embedding_size > 0


def test_method_optimizer_groups_get_their_own_optimizer_and_schedule(faces, tmp_path):
    import facesynth.privacy  # noqa: F401  (registers dctdp)

    # DCTDP declares TFace's settings for its noise: its own Adam at lr 0.1, no weight decay
    result = train_recognizer(
        small_config(
            [faces],
            tmp_path / "run",
            input_size=None,
            method="dctdp",
            backbone_kwargs={"input_size": [16, 16]},
            max_steps=2,
            checkpoint_every=2,
            lr=0.05,
            warmup_epochs=0,
            export_onnx=False,
        )
    )
    checkpoint = result.run_dir / "checkpoints" / "checkpoint-2"
    sgd = torch.load(checkpoint / "optimizer.bin", weights_only=True)
    adam = torch.load(checkpoint / "optimizer_1.bin", weights_only=True)
    assert "momentum" in sgd["param_groups"][0] and "betas" in adam["param_groups"][0]
    assert [g["weight_decay"] for g in sgd["param_groups"]] == [5e-4, 5e-4]  # backbone, class centres
    (noise,) = adam["param_groups"]
    assert noise["weight_decay"] == 0.0 and len(noise["params"]) == 2  # rhos, locs
    # the last step (1 of 2) ran at half of each group's base lr: the stage's linear decay
    assert sgd["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5)
    assert noise["lr"] == pytest.approx(0.1 * 0.5)


def test_method_aux_losses_are_trained_and_logged(faces, tmp_path):
    out = tmp_path / "aux"
    train_recognizer(
        small_config([faces], out, method="test-aux", method_kwargs={"weight": 1.0}, max_steps=3)
    )
    rows = read_csv(out / "train_log.csv")
    assert "aux_gate_l2" in rows[0]
    assert float(rows[-1]["aux_gate_l2"]) < float(rows[0]["aux_gate_l2"])
    assert float(rows[0]["loss"]) == pytest.approx(
        float(rows[0]["margin_loss"]) + float(rows[0]["aux_gate_l2"])
    )
    method = load_method(out)
    assert method.weight == 1.0 and method.gate.item() != 1.0


def test_cli_trains_and_reports_bad_input(faces, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(
        [
            "train-recognizer",
            "--data",
            str(faces),
            "--output-dir",
            str(out),
            "--backbone",
            "tiny",
            "--input-size",
            "32",
            "--batch-size",
            "8",
            "--max-steps",
            "2",
            "--num-workers",
            "1",
            "--head",
            "cosface",
            "--no-progress",
        ]
    )
    assert code == 0
    assert (out / "backbone.safetensors").is_file()
    assert "2 steps on 6 classes" in capsys.readouterr().out
    assert cli_main(["train-recognizer", "--data", str(tmp_path / "nope"), "--output-dir", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_input_errors(faces, tmp_path):
    empty = tmp_path / "empty"
    write_shard(empty / shard_name(0, 1), pa.Table.from_pylist([], schema=arrow_schema(None)))
    add_manifest(empty)
    with pytest.raises(ShardError, match="no rows"):
        train_recognizer(small_config([empty], tmp_path / "r1"))
    with pytest.raises(ConfigError, match="batch_size"):
        train_recognizer(small_config([faces], tmp_path / "r2", batch_size=1000))
    with pytest.raises(ConfigError, match="unknown recognition method 'nope'"):
        train_recognizer(small_config([faces], tmp_path / "r3", method="nope"))
    with pytest.raises(ConfigError, match="sample_rate"):
        RecognizerTrainConfig.from_mapping({"data": ["x"], "output_dir": "y", "sample_rate": 2})
    # a checkpoint from another dataset (different class count) is refused with a clear message
    run = tmp_path / "r4"
    train_recognizer(small_config([faces], run, max_steps=1))
    fewer = make_shards(tmp_path / "fewer", num_ids=2, per_id=8, seed=2)
    with pytest.raises(FacesynthError, match="checkpoint has 6 classes"):
        train_recognizer(small_config([fewer], run, resume="latest", max_steps=2))
    # same class count, different backbone: accelerate's load is wrapped into a clear error
    with pytest.raises(FacesynthError, match="does not match this model"):
        train_recognizer(
            small_config([faces], run, resume="latest", max_steps=2, backbone_kwargs={"num_features": 64})
        )


def test_lr_and_decay_defaults():
    sgd = RecognizerTrainConfig(data=["x"], output_dir="y")
    adamw = RecognizerTrainConfig(data=["x"], output_dir="y", optimizer="adamw")
    assert (sgd.effective_lr(), sgd.effective_weight_decay(), sgd.momentum) == (0.1, 5e-4, 0.9)
    assert (adamw.effective_lr(), adamw.effective_weight_decay()) == (1e-3, 0.1)
    assert (sgd.head, sgd.margin_scale, sgd.backbone, sgd.epochs, sgd.grad_clip) == (
        "arcface",
        64.0,
        "r50",
        20,
        5.0,
    )
    assert np.isclose(sgd.sample_rate, 1.0)


def test_periodic_verification_on_a_benchmark_file(faces, tmp_path):
    from facesynth.core.shard_reader import ShardDataset
    from facesynth.recognizers.benchmark_files import write_bin

    by_label: dict[int, list[np.ndarray]] = {}
    for row in ShardDataset(faces, shuffle=False):
        image = ((row["image"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        by_label.setdefault(int(row["label"]), []).append(image)
    images, issame = [], []
    for i in range(20):  # alternate genuine and impostor pairs
        label = i % 6
        other = label if i % 2 == 0 else (label + 1) % 6
        images += [by_label[label][0], by_label[other][1 + i // 6]]
        issame.append(i % 2 == 0)
    bench = write_bin(tmp_path / "mini.bin", images, issame)
    out = tmp_path / "eval"
    result = train_recognizer(small_config([faces], out, max_steps=4, eval_every=2, benchmarks=[str(bench)]))
    logged = read_csv(out / "eval_log.csv")
    assert [int(r["step"]) for r in logged] == [2, 4]
    assert [e["step"] for e in result.evaluations] == [2, 4]
    assert all(r["benchmark"] == "mini" for r in logged)
    # the last evaluation is the saved model's, measured again from its folder: same accuracy
    from facesynth.recognizers.benchmark_files import load_verification_set
    from facesynth.recognizers.encoders import load_encoder
    from facesynth.recognizers.verification import evaluate_benchmark

    again = evaluate_benchmark(load_encoder(f"torch:{out}", device="cpu"), load_verification_set(bench))
    assert float(logged[-1]["accuracy"]) == pytest.approx(again["accuracy"], abs=1e-6)


def test_calibrate_sensitivity_is_a_config_field(faces, tmp_path):
    import facesynth.privacy  # noqa: F401  (registers dctdp)

    settings = dict(input_size=None, backbone_kwargs={"input_size": [16, 16]}, max_steps=1, export_onnx=False)
    settings.update(calibrate_sensitivity=True, calibration_batches=2)
    result = train_recognizer(small_config([faces], tmp_path / "cal", method="dctdp", **settings))
    sensitivity = load_method(result.run_dir).noise.sensitivity
    assert sensitivity.min() >= 1e-3 and not torch.allclose(sensitivity, torch.ones_like(sensitivity))
    assert "calibrated the sensitivity" in (result.run_dir / "train.log").read_text()
    with pytest.raises(ConfigError, match="calibrate_sensitivity.*no sensitivity"):
        train_recognizer(small_config([faces], tmp_path / "plain", **settings))
