"""DCTDP: fixed total budget, Laplace noise statistics, per-sample draws, learning, calibration."""

from __future__ import annotations

import pytest
import scipy.stats
import torch

from facesynth.core.errors import ConfigError
from facesynth.privacy.dctdp import DCTDP, NoisyActivation, laplace_noise
from facesynth.recognizers.methods import build_method

SMALL = {"input_size": [16, 16]}


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_budgets_keep_their_mean_and_set_the_scale() -> None:
    noise = NoisyActivation((4, 5, 5), epsilon_mean=0.5)
    assert torch.allclose(noise.scales(), torch.full((4, 5, 5), 2.0))  # b = 1 / 0.5 at init
    with torch.no_grad():
        noise.rhos.normal_(0, 3)
    eps = noise.budgets()
    assert torch.isclose(eps.mean(), torch.tensor(0.5), rtol=1e-5)
    assert torch.allclose(noise.scales(), noise.sensitivity / eps)
    with pytest.raises(ConfigError, match="epsilon_mean"):
        NoisyActivation((2,), epsilon_mean=0.0)


def test_total_budget_option() -> None:
    method = build_method("dctdp", "tiny", SMALL, epsilon_total=1000.0)
    assert torch.isclose(method.noise.budgets().sum(), torch.tensor(1000.0), rtol=1e-4)
    assert method.noise.epsilon_mean == pytest.approx(1000.0 / (189 * 16 * 16))
    with pytest.raises(ConfigError, match="epsilon_total"):
        build_method("dctdp", "tiny", SMALL, epsilon_total=-1.0)


def test_laplace_noise_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    x = laplace_noise((200_000,), torch.empty(0), gen)
    assert abs(x.mean().item()) < 0.02
    assert abs(x.abs().mean().item() - 1.0) < 0.02  # E|X| = b
    assert abs(x.var().item() - 2.0) < 0.05  # Var = 2 b^2
    assert torch.isfinite(x).all()
    assert scipy.stats.kstest(x.numpy(), "laplace").pvalue > 1e-3  # the whole distribution, tails too


def test_payload_is_dc_free_coefficients_plus_seeded_per_sample_noise() -> None:
    method = build_method("dctdp", "tiny", SMALL, epsilon_mean=4.0).eval()
    assert isinstance(method, DCTDP) and method.backbone.conv1.in_channels == 189
    x = _images(3)
    x[1] = x[0]
    clean = method.clean_coefficients(x)
    assert clean.shape == (3, 189, 16, 16)
    assert torch.equal(clean, method.policy.select(method.frontend(x)))
    p1, p2, p3 = method.protect(x, seed=1), method.protect(x, seed=1), method.protect(x, seed=2)
    assert torch.equal(p1.tensor, p2.tensor) and not torch.equal(p1.tensor, p3.tensor)
    noise = p1.tensor - clean
    assert not torch.allclose(noise[0], noise[1])  # per-sample draws, even for identical images
    assert abs(noise.abs().mean().item() - 0.25) < 0.01  # b = 1 / 4
    tface_like = build_method("dctdp", "tiny", SMALL, epsilon_mean=4.0, per_sample_noise=False).eval()
    shared = tface_like.protect(x, seed=1).tensor - clean
    assert torch.allclose(shared[0], shared[2], atol=1e-3)  # TFace: one draw broadcast over the batch


def test_noise_parameters_learn_from_the_recognition_loss() -> None:
    torch.manual_seed(0)
    method = build_method("dctdp", "tiny", SMALL, aux_loss_weight=0.1)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    x, labels = _images(4, seed=3), torch.tensor([0, 1, 0, 1])
    before = method.noise.rhos.detach().clone()
    for _ in range(2):
        emb, aux = method.train()(x, labels)
        loss = torch.nn.functional.cross_entropy(emb[:, :2], labels) + sum(aux.values())
        opt.zero_grad()
        loss.backward()
        assert method.noise.rhos.grad is not None and method.noise.rhos.grad.abs().sum() > 0
        assert method.noise.locs.grad is not None
        opt.step()
    assert "dctdp_budget" in aux
    assert not torch.equal(before, method.noise.rhos)
    assert torch.isclose(
        method.noise.budgets().double().mean(), torch.tensor(0.5, dtype=torch.float64), rtol=1e-4
    )  # float32 softmax sum
    (group,) = method.optimizer_groups()  # TFace: its own Adam at lr 0.1, no weight decay
    assert (group.prefix, group.optimizer, group.lr, group.weight_decay) == ("noise.", "adam", 0.1, 0.0)


def test_calibrated_sensitivity_is_the_coefficient_range() -> None:
    method = build_method("dctdp", "tiny", SMALL)
    batches = [_images(4, seed=s) for s in range(3)]
    sens = method.calibrate_sensitivity(batches)
    coeffs = torch.cat([method.clean_coefficients(b) for b in batches])
    expected = (coeffs.amax(0) - coeffs.amin(0)).clamp_min(1e-3)
    assert torch.allclose(sens, expected) and torch.equal(method.noise.sensitivity, sens)
    assert torch.allclose(method.noise.scales(), sens / 0.5)


def test_noise_budgets_spread_after_a_short_training_on_parametric_faces(tmp_path) -> None:
    # issue 15.1: in the backbone's SGD (lr 0.1, weight decay 5e-4) the noise gradients (~1e-4 per
    # element) left b in [1.97, 2.03] (max/min 1.04 here); TFace's own Adam at lr 0.1 spreads it
    # (measured: 0.55 .. 10.0, max/min 18 after 40 steps of this run)
    import scipy.stats

    import facesynth.privacy  # noqa: F401  (registers dctdp)
    from facesynth.recognizers.methods import load_method
    from facesynth.recognizers.trainer import train_recognizer
    from facesynth.tests.recognizer_tiny import make_shards, small_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        faces = make_shards(tmp_path / "faces", num_ids=8, per_id=8)
        config = small_config(
            [faces],
            tmp_path / "run",
            input_size=None,
            method="dctdp",
            backbone_kwargs=SMALL,
            max_steps=40,
            checkpoint_every=0,
            export_onnx=False,
        )
        method = load_method(train_recognizer(config).run_dir)
    finally:
        torch.set_num_threads(threads)
    b = method.noise.scales().detach()
    assert float(b.max() / b.min()) > 5.0
    assert torch.isclose(method.noise.budgets().mean(), torch.tensor(0.5), rtol=1e-4)
    # more noise on the high frequencies (v + u of the 8x8 DCT), which these smooth faces barely use
    # (channel-level Spearman measured 0.19; the loss's use of single coefficients showed no order yet)
    channels = torch.tensor(method.policy.channels) % 64
    frequency = channels // 8 + channels % 8
    rho = scipy.stats.spearmanr(frequency.numpy(), b.log().mean((1, 2)).numpy()).statistic
    assert rho > 0.1
