"""CUDA paths: mixed-precision training of every recognition method and of ID3, half-precision
sampling, the frequency frontend and the Tammes solver on the GPU.

Marked ``gpu``: ``conftest.py`` skips them where no CUDA device is present (CI, this project's CPU
boxes). ``FACESYNTH_TEST_DEVICE=cpu`` runs the same code on the CPU (bf16 only), to debug the tests
themselves without a GPU.
"""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch
from diffusers import DDIMScheduler

import facesynth.privacy  # noqa: F401  (registers the privacy methods)
from facesynth.generators.id3_trainer import train_id3
from facesynth.generators.tammes import min_angle_degrees, random_sphere_points, solve_tammes
from facesynth.privacy.frequency_frontend import FrequencyFrontend
from facesynth.recognizers.trainer import train_recognizer
from facesynth.tests.id3_tiny import (
    tiny_encoder,
    tiny_pipeline,
    tiny_train_config,
    unit_embeddings,
    write_tiny_dataset,
)
from facesynth.tests.recognizer_tiny import make_shards, small_config

DEVICE = torch.device(os.environ.get("FACESYNTH_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.gpu] if DEVICE.type == "cuda" else []
PRECISIONS = ["bf16", "fp16"] if DEVICE.type == "cuda" else ["bf16"]
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _finite_column(path, column: str) -> list[float]:
    values = [float(row[column]) for row in csv.DictReader(path.open())]
    assert values and all(math.isfinite(v) for v in values), f"{column} in {path}: {values}"
    return values


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("faces"), num_ids=8, per_id=8)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", ["plain", "dctdp", "duetface", "partialface", "minusface"])
def test_every_method_trains_in_mixed_precision(faces, tmp_path, method, precision):
    config = small_config(
        [faces],
        tmp_path / "run",
        input_size=None,  # the privacy frontends work at 112x112
        method=method,
        mixed_precision=precision,
        batch_size=16,
        max_steps=6,
        lr=0.01,
    )
    result = train_recognizer(config)
    assert result.steps == 6
    _finite_column(result.run_dir / "train_log.csv", "loss")
    assert (result.run_dir / "backbone.safetensors").is_file()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_id3_trains_in_mixed_precision(tmp_path, precision):
    data = write_tiny_dataset(tmp_path / "data", tiny_encoder())
    config = tiny_train_config(
        data, tmp_path / "run", image_size=16, batch_size=8, max_steps=6, mixed_precision=precision
    )
    result = train_id3(config, identity_encoder=tiny_encoder())
    assert result.steps == 6
    for column in ("loss", "eps_mse", "id_cos"):
        _finite_column(tmp_path / "run" / "train_log.csv", column)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kappa", [0.0, 5.0])
def test_half_precision_sampling_tracks_fp32(precision, kappa):
    y = unit_embeddings(4)
    encoder = tiny_encoder(size=16)
    encoder.model.to(DEVICE)
    samples = {}
    for name, dtype in (("fp32", torch.float32), (precision, HALF[precision])):
        pipe = tiny_pipeline(sample_size=16)
        # deterministic DDIM: DDPM draws fresh noise each step in the model's dtype, and torch's half
        # and float32 normal samplers need not give the same numbers for one seed
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.to(DEVICE, dtype)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            y,
            num_inference_steps=10,
            id_guidance=kappa,
            identity_encoder=encoder,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        )
        samples[name] = out.images.float().cpu()
        assert torch.isfinite(samples[name]).all()
    # same noise, same model: half precision stays close to fp32. On an H100 (images in [0, 1]) every
    # case but bf16 with kappa = 5 came in under 0.05, that one at 0.050 (8 mantissa bits, amplified by
    # the guidance gradient); an unrelated sample differs by about 0.42.
    assert (samples["fp32"] - samples[precision]).abs().mean() < {"bf16": 0.08, "fp16": 0.05}[precision]


def test_frequency_frontend_on_device_matches_cpu():
    x = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    frontend = FrequencyFrontend()
    expected = frontend(x)
    got = frontend.to(DEVICE)(x.to(DEVICE)).cpu()
    assert (got - expected).abs().max() < 1e-3
    decoded = frontend.decode(got.to(DEVICE)).cpu()
    assert (decoded - frontend.to("cpu").decode(expected)).abs().max() < 1e-3


def test_tammes_on_device_beats_random():
    result = solve_tammes(2000, 64, seed=0, steps=60, device=DEVICE, progress=False)
    assert result.anchors.shape == (2000, 64) and result.anchors.device.type == "cpu"
    random_angle = min_angle_degrees(random_sphere_points(2000, 64, seed=0))
    assert min_angle_degrees(result.anchors) == pytest.approx(result.min_angle_deg, abs=1e-3)
    assert result.min_angle_deg > random_angle + 5
