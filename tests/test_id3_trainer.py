"""ID3 trainer: a tiny end-to-end run, exact resume, neutral attributes, clear errors, the CLI."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from facesynth.core.errors import ConfigError, ShardError
from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.generators.id3_pipeline import ID3Pipeline
from facesynth.generators.id3_trainer import train_id3
from facesynth.pipelines.cli import main
from facesynth.tests.cli_processes import run_cli
from facesynth.tests.id3_tiny import (
    face_image,
    one_thread,
    tiny_encoder,
    tiny_train_config,
    unit_embeddings,
    write_tiny_dataset,
)
from facesynth.tests.shard_fixtures import add_manifest


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.mark.slow
def test_train_writes_pipeline_and_resumes_exactly(tmp_path):
    encoder = tiny_encoder()
    data = write_tiny_dataset(tmp_path / "data", encoder, attributes=False)
    result = train_id3(
        tiny_train_config(data, tmp_path / "a", use_attributes=False), identity_encoder=encoder
    )
    run = tmp_path / "a"
    assert result.steps == 4 and result.filled_attributes == 4 * 4 * 4
    assert (run / "samples" / "step-00000002.png").is_file() and (
        run / "samples" / "step-00000004.png"
    ).is_file()
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "eps_mse", "rec_mse", "rec_term", "id_cos", "id_term"):
        assert all(float(r[key]) == float(r[key]) for r in rows)  # present and not NaN
    assert "neutral values" in (run / "train.log").read_text()

    pipe = ID3Pipeline.from_pretrained(result.pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(unit_embeddings(2), num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 8, 8, 3)

    # resume from step 2 in another folder: the final weights equal the uninterrupted run's
    resumed = tmp_path / "b"
    shutil.copytree(run / "checkpoints" / "checkpoint-2", resumed / "checkpoints" / "checkpoint-2")
    result_b = train_id3(
        tiny_train_config(data, resumed, resume="latest", use_attributes=False), identity_encoder=encoder
    )
    assert result_b.steps == 4
    for part in ("unet", "condition_encoder"):
        a = load_file(run / "pipeline" / part / "diffusion_pytorch_model.safetensors")
        b = load_file(resumed / "pipeline" / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.slow
def test_checkpoints_of_the_earlier_layout_still_resume(tmp_path):
    # before save_pretrained inside checkpoints: model.safetensors, model_1.safetensors, ema.safetensors
    from safetensors.torch import save_file

    data = write_tiny_dataset(tmp_path / "data", tiny_encoder(), identities=2, per_identity=4)
    settings = dict(loss={"lambda_id": 0.0}, sample_every=0)
    train_id3(tiny_train_config(data, tmp_path / "a", **settings))
    new = tmp_path / "a" / "checkpoints" / "checkpoint-2"
    old = tmp_path / "b" / "checkpoints" / "checkpoint-00000002"
    shutil.copytree(new, old, ignore=shutil.ignore_patterns("unet*", "condition_encoder*"))
    weights = "diffusion_pytorch_model.safetensors"
    for i, part in enumerate(("unet", "condition_encoder")):
        save_file(load_file(new / part / weights), old / f"model{'_1' if i else ''}.safetensors")
    ema_config = json.loads((new / "unet_ema" / "config.json").read_text())
    state = json.loads((old / "trainer_state.json").read_text())
    (old / "trainer_state.json").write_text(
        json.dumps({**state, "ema_step": ema_config["optimization_step"]})
    )
    # the EMA file listed parameters in model order (unet, then condition encoder)
    from diffusers import UNet2DConditionModel

    from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder

    ordered = []
    for part, cls in (("unet", UNet2DConditionModel), ("condition_encoder", ID3ConditionEncoder)):
        model = cls.from_pretrained(new / f"{part}_ema")
        ordered += [p.detach().clone() for p in model.parameters()]
    save_file({f"shadow.{i}": t.contiguous() for i, t in enumerate(ordered)}, old / "ema.safetensors")
    result = train_id3(tiny_train_config(data, tmp_path / "b", resume="latest", **settings))
    assert result.steps == 4
    for part in ("unet", "condition_encoder"):
        a = load_file(tmp_path / "a" / "pipeline" / part / weights)
        b = load_file(tmp_path / "b" / "pipeline" / part / weights)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_training_data_and_encoder_errors(tmp_path):
    rows = [ShardRow(image=face_image(0, i), label=0, identity="id0", index=i) for i in range(4)]
    write_shard(tmp_path / "plain" / shard_name(0, 1), rows_to_table(rows, None))
    add_manifest(tmp_path / "plain")
    with pytest.raises(ShardError, match="needs an 'embedding' column"):
        train_id3(tiny_train_config(tmp_path / "plain", tmp_path / "out"))
    data = write_tiny_dataset(tmp_path / "data", tiny_encoder(), identities=2, per_identity=2)
    with pytest.raises(ConfigError, match="lambda_id != 0 needs identity_encoder"):
        train_id3(tiny_train_config(data, tmp_path / "out2"))
    with pytest.raises(ConfigError, match="unet_preset"):
        tiny_train_config(data, tmp_path / "out3", unet_preset="huge")


def test_cli_reports_bad_data_with_exit_2(tmp_path, capsys):
    rows = [ShardRow(image=face_image(0, i), label=0, identity="id0", index=i) for i in range(2)]
    write_shard(tmp_path / "plain" / shard_name(0, 1), rows_to_table(rows, None))
    add_manifest(tmp_path / "plain")
    code = main(
        [
            "train-generator",
            "--data",
            str(tmp_path / "plain"),
            "--output",
            str(tmp_path / "o"),
            "--lambda-id",
            "0",
        ]
    )
    assert code == 2
    assert "embedding" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_a_pipeline_that_facesynth_generate_can_use(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", tiny_encoder(), identities=2, per_identity=4)
    args = ["train-generator", "--data", str(data), "--output", str(tmp_path / "run"), "--lambda-id", "0"]
    args += ["--unet-preset", "tiny", "--image-size", "8", "--batch-size", "4", "--max-steps", "2"]
    args += ["--checkpoint-every", "0", "--sample-every", "0", "--num-workers", "0", "--no-progress"]
    for setting in ("cross_attention_dim=32", "hidden_dims=[32,32]", "sample_steps=2", "sample_count=2"):
        args += ["--set", setting]
    assert main(args) == 0
    pipeline = tmp_path / "run" / "pipeline"
    assert (pipeline / "model_index.json").is_file()
    assert (tmp_path / "run" / "samples" / "step-00000002.png").is_file()
    out = tmp_path / "generated"
    code = main(
        [
            "generate",
            "--generator",
            "id3",
            "--identities",
            "2",
            "--per-identity",
            "2",
            "--out",
            str(out),
            "-o",
            f"pipeline={pipeline}",
            "-o",
            "id_guidance=0",
            "-o",
            "num_inference_steps=2",
            "-o",
            "tammes_steps=5",
            "--no-progress",
        ]
    )
    assert code == 0
    assert main(["verify", str(out)]) == 0


@pytest.mark.slow
def test_two_processes_finish_off_a_checkpoint_boundary(tmp_path):
    # bug: the final save (save_state + barrier) ran on the main process only, so rank 0 died at the end
    # whenever max_steps was not a multiple of checkpoint_every; every process must reach it
    # two one-row-group datasets: the reader splits processes by row group
    data = [str(write_tiny_dataset(tmp_path / f"data{i}", tiny_encoder(), 2, 4)) for i in range(2)]
    run = tmp_path / "run"
    args = ["train-generator", "--data", *data, "--out", str(run), "--lambda-id", "0"]
    args += ["--unet-preset", "tiny", "--image-size", "8", "--batch-size", "4", "--max-steps", "3"]
    args += ["--checkpoint-every", "2", "--sample-every", "0", "--num-workers", "0", "--no-progress"]
    for setting in ("cross_attention_dim=32", "hidden_dims=[32,32]", "sample_steps=2", "log_every=1"):
        args += ["--set", setting]
    done = run_cli(*args, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    state = json.loads((run / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"]) == (3, 2)
    pipe = ID3Pipeline.from_pretrained(run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(unit_embeddings(1), num_inference_steps=1, output_type="np").images.shape == (1, 8, 8, 3)
    assert [int(r["step"]) for r in csv.DictReader((run / "train_log.csv").open())] == [1, 2, 3]


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; a run with another mixed precision needs it reset."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_gradient_accumulation_and_bf16_autocast(tmp_path, fresh_accelerate_state):
    data = write_tiny_dataset(tmp_path / "data", tiny_encoder(), identities=2, per_identity=4)
    config = tiny_train_config(
        data,
        tmp_path / "run",
        loss={"lambda_id": 0.0},
        gradient_accumulation_steps=2,
        max_steps=2,
        checkpoint_every=0,
        sample_every=0,
        sample_steps=1,
        sample_count=2,
        mixed_precision="bf16",
    )
    result = train_id3(config)
    assert result.steps == 2
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert result.images_per_second > 0 and float(rows[-1]["loss"]) == float(rows[-1]["loss"])
    # two micro-batches per optimizer step: four batches consumed for two steps
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["step"], state["micro_step"], state["world_size"]) == (2, 4, 1)
    assert json.loads((checkpoint / "unet_ema" / "config.json").read_text())["optimization_step"] == 2


def test_warmup_scales_to_short_runs_or_warns(tmp_path, caplog):
    # issue 11.5: the README's --max-steps 50 with a fixed 500-step warm-up never left warm-up
    short = tiny_train_config(tmp_path, tmp_path / "o", max_steps=50, lr_warmup_steps=None)
    assert short.effective_warmup_steps() == 5
    long = tiny_train_config(tmp_path, tmp_path / "o", max_steps=100_000, lr_warmup_steps=None)
    assert long.effective_warmup_steps() == 500
    explicit = tiny_train_config(tmp_path, tmp_path / "o", max_steps=50, lr_warmup_steps=500)
    with caplog.at_level("WARNING", logger="facesynth"):
        assert explicit.effective_warmup_steps() == 500
    assert "never leaves warm-up" in caplog.text
