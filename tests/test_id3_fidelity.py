"""Issue 14.2 fidelity options: each changes the computation exactly as its docstring says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.generators.attributes import attribute_coverage, require_attribute_coverage
from facesynth.generators.id3_loss import timestep_weight
from facesynth.generators.id3_sampling import guidance_active, kappa_at
from facesynth.generators.id3_trainer import ID3TrainConfig
from facesynth.generators.id3_unet import build_id3_unet
from facesynth.tests.id3_tiny import (
    one_thread,
    tiny_encoder,
    tiny_pipeline,
    unit_embeddings,
    write_tiny_dataset,
)


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


def test_condition_dropout_defaults_to_zero_like_the_paper():
    config = ID3TrainConfig(data=["x"], output_dir="y")
    assert config.condition_dropout == 0.0


def test_id3_sigmoid_kappa_equals_the_training_weight_of_the_identity_term():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    steps = torch.tensor([0, 250, 999])
    training = timestep_weight("id3_sigmoid", steps, scheduler.alphas_cumprod, 1000)
    for t, weight in zip(steps.tolist(), training.tolist(), strict=True):
        abar = float(scheduler.alphas_cumprod[t])
        assert kappa_at("id3_sigmoid", 3.0, abar, t, 1000) == pytest.approx(3.0 * weight, rel=1e-6)
    assert kappa_at("id3_sigmoid", 1.0, 0.5, 0, 1000) == pytest.approx(0.25)
    assert kappa_at("id3_sigmoid", 1.0, 0.5, 1000, 1000) == pytest.approx(0.5 * (1 - 1 / (1 + math.e**-1)))
    # alpha_bar differs: the schedules are distinct options
    assert kappa_at("alpha_bar", 1.0, 0.5) == 0.5
    with pytest.raises(FacesynthError, match="needs the timestep"):
        kappa_at("id3_sigmoid", 1.0, 0.5)


def test_guidance_active_every_and_until():
    assert [guidance_active(i, 10, every=3) for i in range(10)] == [i % 3 == 0 for i in range(10)]
    assert [guidance_active(i, 10, until=0.4) for i in range(10)] == [i < 4 for i in range(10)]
    assert [guidance_active(i, 10, every=2, until=0.5) for i in range(10)] == [
        i in (0, 2, 4) for i in range(10)
    ]
    with pytest.raises(FacesynthError, match="id_guidance_every"):
        guidance_active(0, 10, every=0)
    with pytest.raises(FacesynthError, match="id_guidance_until"):
        guidance_active(0, 10, until=1.5)


class _CountingEncoder(torch.nn.Module):
    """Wraps the tiny encoder and counts forward calls with gradients enabled (the guidance calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_encoder()
        self.input_size = self.inner.input_size
        self.calls = 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.calls += 1
        return self.inner.model(images)


def test_pipeline_takes_the_identity_gradient_only_where_asked():
    pipe = tiny_pipeline()
    y = unit_embeddings(2, seed=4)

    def run(**kwargs):
        encoder = _CountingEncoder()
        out = pipe(
            y,
            num_inference_steps=6,
            id_guidance=30.0,
            identity_encoder=encoder,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **kwargs,
        )
        return out.images, encoder.calls

    full, calls_full = run()
    half, calls_every = run(id_guidance_every=2)
    early, calls_until = run(id_guidance_until=0.5)
    none, calls_none = run(id_guidance_until=0.0)
    assert (calls_full, calls_every, calls_until, calls_none) == (6, 3, 3, 0)
    plain = pipe(
        y, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    np.testing.assert_allclose(none, plain, atol=1e-6)
    assert not np.allclose(full, half) and not np.allclose(full, early)


def _first_block_output(unet, tokens: torch.Tensor) -> torch.Tensor:
    """Output of the highest-resolution down block for fixed noise and timestep."""
    captured = {}
    hook = unet.down_blocks[0].register_forward_hook(lambda m, i, o: captured.update(out=o[0]))
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unet(sample, 500, encoder_hidden_states=tokens)
    hook.remove()
    return captured["out"]


@pytest.mark.parametrize(
    ("options", "reaches_high_resolution"),
    [
        ({}, False),
        ({"cross_attention_levels": "all"}, True),
        ({"condition_in_time_embedding": True}, True),
    ],
)
def test_condition_wiring_decides_whether_the_high_resolution_block_sees_the_condition(
    options, reaches_high_resolution
):
    torch.manual_seed(0)
    unet = build_id3_unet("tiny", 8, cross_attention_dim=32, **options).eval()
    a = torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(1))
    b = torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(2))
    changed = not torch.allclose(_first_block_output(unet, a), _first_block_output(unet, b))
    assert changed == reaches_high_resolution


@pytest.mark.parametrize(("num_tokens", "uniform"), [(1, True), (4, False)])
def test_one_condition_token_is_a_spatially_uniform_bias(num_tokens, uniform):
    torch.manual_seed(0)
    unet = build_id3_unet("tiny", 8, cross_attention_dim=32).eval()
    attention = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    captured = {}
    hook = attention.register_forward_hook(lambda m, i, o: captured.update(out=o))
    tokens = torch.randn(1, num_tokens, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unet(torch.randn(1, 3, 8, 8), 500, encoder_hidden_states=tokens)
    hook.remove()
    out = captured["out"][0]  # (pixels, channels)
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-5) == uniform


def test_unknown_wiring_option_is_refused():
    with pytest.raises(ConfigError, match="cross_attention_levels"):
        build_id3_unet("tiny", 8, cross_attention_dim=32, cross_attention_levels="some")


def test_training_refuses_attributes_that_are_mostly_missing(tmp_path):
    from facesynth.generators.id3_trainer import train_id3
    from facesynth.tests.id3_tiny import tiny_train_config

    encoder = tiny_encoder()
    bare = write_tiny_dataset(tmp_path / "bare", encoder, identities=2, per_identity=2, attributes=False)
    assert attribute_coverage(bare) == {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "age": 0.0}
    with pytest.raises(ConfigError, match=r"yaw missing in 100% of rows.*use_attributes=false"):
        train_id3(tiny_train_config(bare, tmp_path / "run"), identity_encoder=encoder)
    assert not (tmp_path / "run" / "pipeline").exists()
    full = write_tiny_dataset(tmp_path / "full", encoder, identities=2, per_identity=2)
    assert require_attribute_coverage(full)["age"] == 1.0
