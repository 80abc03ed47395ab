"""ID-preserving loss: schedules, finite terms that decrease over a short run, encoder requirements."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
from facesynth.generators.id3_loss import ID3LossConfig, id3_loss, predict_x0, timestep_weight
from facesynth.generators.id3_unet import build_id3_unet
from facesynth.tests.id3_tiny import face_image, one_thread, tiny_encoder


@pytest.fixture(autouse=True)
def _threads():
    with one_thread():
        yield


def test_id3_sigmoid_schedule_values():
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    t = torch.tensor([0, 500, 999])
    w = timestep_weight("id3_sigmoid", t, abar, 1000)
    expected = [0.5 * (1 - 1 / (1 + math.exp(-v / 1000))) for v in (0, 500, 999)]
    torch.testing.assert_close(w, torch.tensor(expected))
    assert w[0] == pytest.approx(0.25)
    clipped = timestep_weight("id3_sigmoid_snr", t, abar, 1000)
    assert clipped[0] == pytest.approx(0.25) and clipped[2] < 1e-3 * w[2]
    assert torch.all(timestep_weight("constant", t, abar, 1000) == 1)
    with pytest.raises(FacesynthError, match="unknown name"):
        timestep_weight("cosine", t, abar, 1000)
    with pytest.raises(ConfigError, match="id_schedule"):
        ID3LossConfig.from_mapping({"id_schedule": "cosine"})


def test_predict_x0_inverts_add_noise():
    scheduler = DDPMScheduler()
    x0 = torch.rand(3, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([10, 400, 900])
    noisy = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(
        predict_x0(noisy, noise, t, scheduler.alphas_cumprod), x0, rtol=1e-4, atol=1e-3
    )


def test_terms_are_finite_and_decrease_over_a_short_run():
    """A tiny UNet + condition encoder fitted on one fixed batch: every term improves."""
    torch.manual_seed(0)
    encoder = tiny_encoder()
    images = torch.stack(
        [torch.from_numpy(face_image(label, 0)).permute(2, 0, 1).float() / 127.5 - 1 for label in range(4)]
    )
    clean = torch.nn.functional.interpolate(images, size=(8, 8), mode="bilinear", antialias=True)
    with torch.no_grad():
        y = encoder.embed(torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear"))
    unet = build_id3_unet("tiny", 8, cross_attention_dim=32)
    cond = ID3ConditionEncoder(embedding_dim=16, hidden_dims=(32, 32), cross_attention_dim=32)
    scheduler = DDPMScheduler()
    optimizer = torch.optim.AdamW([*unet.parameters(), *cond.parameters()], lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=gen)
    t = torch.tensor([50, 150, 300, 600])
    noisy = scheduler.add_noise(clean, noise, t)
    config = ID3LossConfig(lambda_rec=1.0, lambda_id=1.0, id_schedule="constant", rec_schedule="constant")
    history = []
    for _ in range(25):
        pred = unet(noisy, t, encoder_hidden_states=cond(y, torch.zeros(4, 4))).sample
        terms = id3_loss(
            config,
            noise_pred=pred,
            noise=noise,
            noisy=noisy,
            clean=clean,
            timesteps=t,
            alphas_cumprod=scheduler.alphas_cumprod,
            identity_embeddings=y,
            identity_encoder=encoder,
        )
        assert all(torch.isfinite(v) for v in terms.values())
        history.append({k: float(v.detach()) for k, v in terms.items()})
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    first, last = history[0], history[-1]
    assert last["loss"] < 0.7 * first["loss"]
    assert last["eps_mse"] < first["eps_mse"]
    assert last["rec_mse"] < first["rec_mse"]
    assert last["id_cos"] > first["id_cos"]
    assert set(first) == {"loss", "eps_mse", "rec_mse", "rec_term", "id_cos", "id_term"}


def test_identity_term_needs_a_differentiable_encoder():
    scheduler = DDPMScheduler()
    x = torch.zeros(1, 3, 8, 8)
    kwargs = dict(
        noise_pred=x,
        noise=x,
        noisy=x,
        clean=x,
        timesteps=torch.tensor([5]),
        alphas_cumprod=scheduler.alphas_cumprod,
        identity_embeddings=torch.ones(1, 16) / 4,
    )
    with pytest.raises(FacesynthError, match="needs an identity encoder"):
        id3_loss(ID3LossConfig(), **kwargs)

    class Frozen:
        differentiable = False

    with pytest.raises(FacesynthError, match="not differentiable"):
        id3_loss(ID3LossConfig(), identity_encoder=Frozen(), **kwargs)
    terms = id3_loss(ID3LossConfig(lambda_id=0.0), **kwargs)
    assert float(terms["id_term"]) == 0.0
