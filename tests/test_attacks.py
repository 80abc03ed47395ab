"""Attack metrics, the ridge inverse, the U-Net decoder and the attack harness on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facesynth.core.errors import FacesynthError
from facesynth.privacy.attacks import (
    DecoderConfig,
    RidgeInverse,
    decode,
    psnr,
    recovery_metrics,
    ssim,
    train_decoder,
)
from facesynth.privacy.roi_mask import roi_mask_from_landmarks
from facesynth.privacy.unet import UNet, sparsity_kl
from facesynth.tests.shard_fixtures import add_manifest


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


# --- metrics ----------------------------------------------------------------------------------------


def test_psnr_known_values():
    x = torch.zeros(2, 3, 16, 16)
    y = x.clone()
    y[0] += 0.1  # mse 0.01 with range 2 -> 10 log10(4 / 0.01) = 26.02 dB
    y[1] += 1.0  # mse 1 -> 10 log10(4) = 6.02 dB
    values = psnr(y, x)
    assert values[0].item() == pytest.approx(10 * math.log10(400), abs=1e-4)
    assert values[1].item() == pytest.approx(10 * math.log10(4), abs=1e-4)
    assert psnr(x, x)[0].item() > 100


def test_ssim_identity_constant_shift_and_symmetry():
    img = _smooth_images(2, 32)
    assert torch.allclose(ssim(img, img), torch.ones(2), atol=1e-6)
    # constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1)
    a, b = torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), -0.3)
    c1 = (0.01 * 2) ** 2
    expected = (2 * 0.2 * -0.3 + c1) / (0.2**2 + 0.3**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-5)
    noisy = img + 0.3 * torch.randn_like(img)
    assert torch.allclose(ssim(noisy, img), ssim(img, noisy), atol=1e-6)
    assert (ssim(noisy, img) < 0.9).all()
    # more noise, lower SSIM
    assert (ssim(img + 0.6 * torch.randn_like(img), img) < ssim(noisy, img)).all()


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(FacesynthError, match="one shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(FacesynthError, match="window"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_recovery_metrics_identity_encoder():
    # an "encoder" that reads the identity straight off the pixels: perfect recovery -> success 1,
    # a recovery that erases identity -> success 0
    labels = torch.arange(8).repeat_interleave(3)
    protos = F.normalize(torch.randn(8, 3 * 16 * 16), dim=1)
    images = (protos[labels] + 0.05 * torch.randn(24, 3 * 16 * 16)).view(24, 3, 16, 16)

    def embed(x):
        return x.flatten(1)

    perfect = recovery_metrics(images, images, labels, embed, far=0.05)
    assert perfect["attack_success"] == 1.0 and perfect["reference_tar"] == 1.0
    assert perfect["identity_leakage"] == pytest.approx(1.0)
    noise = torch.randn_like(images)
    erased = recovery_metrics(noise, images, labels, embed, far=0.05)
    assert erased["attack_success"] < 0.3 and erased["rank1_identification"] < 0.5
    assert erased["identity_leakage"] < 0.2
    # a bland average face is close to every template: rank-1 identification exposes it
    blank = images.mean(0, keepdim=True).expand_as(images) + 1e-3 * torch.randn_like(images)
    assert recovery_metrics(blank, images, labels, embed, far=0.05)["rank1_identification"] < 0.5


# --- ridge ------------------------------------------------------------------------------------------


def test_ridge_global_recovers_an_invertible_linear_map():
    images = torch.rand(200, 3, 4, 4) * 2 - 1
    a = torch.randn(48, 48, dtype=torch.float64) + 4 * torch.eye(48, dtype=torch.float64)
    payload = (images.double().flatten(1) @ a).view(200, 3, 4, 4).float()
    ridge = RidgeInverse(alpha=1e-8, mode="global").fit(payload[:150], images[:150])
    recovered = ridge.predict(payload[150:])
    assert torch.allclose(recovered, images[150:], atol=1e-3)


def test_ridge_local_recovers_a_pointwise_linear_map_and_rejects_other_payloads():
    images = _smooth_images(12, 32) * 0.9
    mix = torch.randn(5, 3) + torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]])
    payload = torch.einsum("bchw,kc->bkhw", images, mix)
    ridge = RidgeInverse(alpha=1e-8, mode="local", kernel=3, positions_per_image=256)
    for i in range(0, 8, 4):
        ridge.partial_fit(payload[i : i + 4], images[i : i + 4])
    ridge.finish()
    recovered = ridge.predict(payload[8:])
    assert psnr(recovered, images[8:]).min() > 60
    with pytest.raises(FacesynthError, match="another method"):
        ridge.predict(payload[8:, :4])
    with pytest.raises(FacesynthError, match="fit"):
        RidgeInverse().predict(payload)


# --- U-Net and decoder ------------------------------------------------------------------------------


def test_unet_shapes_latent_and_sparsity():
    net = UNet(in_channels=5, out_channels=2, block_out_channels=(4, 8, 16), output_activation="sigmoid")
    out, latent = net(torch.randn(2, 5, 28, 20), return_latent=True)
    assert out.shape == (2, 2, 28, 20) and latent.shape == (2, 16, 7, 5)
    assert out.min() >= 0 and out.max() <= 1
    assert sparsity_kl(latent).item() >= 0
    with pytest.raises(ValueError, match="output_activation"):
        UNet(output_activation="relu")


@pytest.mark.slow
def test_decoder_learns_the_identity_map():
    images = _smooth_images(32, 32, seed=1) * 0.8
    config = DecoderConfig(block_out_channels=(8, 16), lr=3e-3, steps=150, batch_size=8)

    def batches():
        for i in range(0, 24, 8):
            yield images[i : i + 8], images[i : i + 8]

    decoder = train_decoder(batches, 3, config, progress=False)
    recovered = decode(decoder, images[24:], size=(32, 32))
    assert psnr(recovered, images[24:]).mean() > 24


# --- ROI mask ---------------------------------------------------------------------------------------


def test_roi_mask_from_template_and_landmarks():
    template = roi_mask_from_landmarks(None, batch_size=3)
    assert template.shape == (3, 1, 112, 112)
    assert 0.2 < template.mean().item() < 0.7
    assert template[0, 0, 70, 56] == 1 and template[0, 0, 2, 2] == 0
    square = torch.tensor([[[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0], [20.0, 20.0]]])
    bare = roi_mask_from_landmarks(square, size=40, expand=1.0, top_extra=0.0)
    assert bare[0, 0, 20, 20] == 1 and bare[0, 0, 5, 20] == 0
    assert bare.sum().item() == pytest.approx(21 * 21, abs=1)
    with pytest.raises(FacesynthError, match="shape"):
        roi_mask_from_landmarks(torch.zeros(2, 2))


@pytest.mark.slow
def test_attack_on_the_identity_method_recovers_near_perfectly():
    from facesynth.privacy.attacks import AttackConfig, run_attack

    public = _smooth_images(48, 32, seed=2) * 0.8
    victims = _smooth_images(12, 32, seed=3) * 0.8
    labels = torch.arange(6).repeat_interleave(2)
    config = AttackConfig(
        decoder=DecoderConfig(block_out_channels=(8, 16), lr=3e-3, steps=120, batch_size=8),
        ridge_positions=256,
        ridge_alpha=1e-6,
        batch_size=8,
        far=0.1,
    )
    metrics, recoveries, attack = run_attack(
        lambda images, seed: images,
        public,
        victims,
        labels,
        config,
        embed=lambda x: x.flatten(1),
        progress=False,
    )
    assert metrics["ridge"]["psnr"] > 45 and metrics["ridge"]["ssim"] > 0.99
    assert metrics["decoder"]["psnr"] > metrics["no_information"]["psnr"] + 8
    assert metrics["ridge"]["attack_success"] == pytest.approx(metrics["ridge"]["reference_tar"])
    assert recoveries["decoder"].shape == victims.shape
    assert set(attack.recover(victims[:2])) == {"decoder", "ridge"}


def test_view_draws_fix_the_client_calls_and_the_decoder_still_learns(monkeypatch):
    """With view_draws the decoder trains on N payloads per public face drawn once: the client runs
    N times per face whatever the decoder's steps, and the recovery still beats the floor."""
    from facesynth.privacy.attacks import AttackConfig, run_attack

    public = _smooth_images(32, 16, seed=2) * 0.8
    victims = _smooth_images(8, 16, seed=3) * 0.8
    labels = torch.arange(4).repeat_interleave(2)
    calls = []

    def noisy_client(images, seed):
        calls.append(images.shape[0])
        g = torch.Generator().manual_seed(seed)
        return images + 0.1 * torch.randn(images.shape, generator=g)

    def attack(steps, draws):
        calls.clear()
        config = AttackConfig(
            decoder=DecoderConfig(block_out_channels=(8, 16), lr=3e-3, steps=steps, batch_size=8),
            ridge=False,
            batch_size=8,
            scale_batches=1,
            view_draws=draws,
        )
        metrics, _, _ = run_attack(noisy_client, public, victims, labels, config, progress=False)
        return metrics, sum(calls)

    overhead = 8 + 8  # the scale batch and the victims
    assert attack(8, 3)[1] == overhead + 3 * 32 == attack(40, 3)[1]
    assert attack(40, None)[1] == overhead + 40 * 8  # fresh payloads: one client call per step
    metrics, _ = attack(80, 2)
    assert metrics["decoder"]["psnr"] > metrics["no_information"]["psnr"] + 3
    with pytest.raises(FacesynthError, match="view_draws"):
        attack(2, 0)
    import facesynth.privacy.attacks as attacks_module

    # a pool that would not fit is refused before any client call for it: 3 draws x 32 faces x 3 x 16 x 16
    monkeypatch.setattr(attacks_module, "MAX_VIEW_POOL_BYTES", 3 * 32 * 3 * 16 * 16 * 4 - 1)
    with pytest.raises(FacesynthError, match="GiB"):
        attack(2, 3)
    assert attack(2, 2)[1] == overhead + 2 * 32


def test_trained_attack_refuses_payloads_of_another_method_or_key():
    from facesynth.privacy.attacks import TrainedAttack, attack_view
    from facesynth.privacy.payload import Payload, PayloadHeader

    header = PayloadHeader(method="minusface", key_id="aaaa", channels=3, shape=(3, 16, 16))
    payload = Payload(torch.zeros(2, 3, 16, 16), header)
    decoder = UNet(3, 3, (4, 8), "tanh")
    attack = TrainedAttack(decoder=decoder, ridge=None, scale=torch.ones(3), header=header, size=(16, 16))
    assert attack.recover(payload)["decoder"].shape == (2, 3, 16, 16)
    other_method = Payload(torch.zeros(2, 3, 16, 16), PayloadHeader("partialface", "aaaa", 3, (3, 16, 16)))
    with pytest.raises(FacesynthError, match="partialface"):
        attack.recover(other_method)
    other_key = Payload(torch.zeros(2, 3, 16, 16), PayloadHeader("minusface", "bbbb", 3, (3, 16, 16)))
    with pytest.raises(FacesynthError, match="client key"):
        attack.recover(other_key)
    with pytest.raises(FacesynthError, match="bare"):
        attack.recover(torch.zeros(2, 3, 16, 16))
    rgb_attack = TrainedAttack(decoder=decoder, ridge=None, scale=torch.ones(3), header=None, size=(16, 16))
    with pytest.raises(FacesynthError, match="unprotected"):
        rgb_attack.recover(payload)
    # masks travel as extra channels of the attack view
    masked = Payload(
        torch.zeros(2, 3, 16, 16),
        PayloadHeader("duetface", "k", 3, (3, 16, 16), extras={"mask1": (1, 8, 8)}),
        {"mask1": torch.ones(2, 1, 8, 8)},
    )
    view = attack_view(masked)
    assert view.shape == (2, 4, 16, 16) and torch.allclose(view[:, 3], torch.ones(2, 16, 16))


def _write_faces(folder, identities, per_identity=2, seed=0, landmarks=False):
    """Blocky random faces; ``landmarks``: each face gets its own 5 points (a shifted template)."""
    import numpy as np

    from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
    from facesynth.recognizers.alignment import template

    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(identities):
        base = rng.integers(0, 255, (14, 14, 3)).repeat(8, 0).repeat(8, 1)
        for index in range(per_identity):
            noisy = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            points = template(112) + rng.uniform(-12, 12, (1, 2)) if landmarks else None
            rows.append(ShardRow(image=noisy, label=label, identity=name, index=index, landmarks=points))
    write_shard(folder / shard_name(0, 1), rows_to_table(rows, None))
    add_manifest(folder)
    return folder


def test_attack_command_rgb_baseline_and_identity_overlap_error(tmp_path, capsys):
    import json

    from facesynth.pipelines.cli import main

    data = _write_faces(tmp_path / "faces", [f"id{i}" for i in range(6)])
    out = tmp_path / "report"
    common = ["--decoder-steps", "2", "--decoder-widths", "4", "8", "--batch-size", "4", "--no-progress"]
    code = main(["attack", "--target", "rgb", "--public", str(data), "--out", str(out), *common])
    assert code == 0
    report = json.loads((out / "attack.json").read_text())
    assert report["num_public_identities"] == 3 and report["num_victim_identities"] == 3
    assert report["attackers"]["ridge"]["psnr"] > 40  # the RGB "payload" is the image: ridge inverts it
    assert (out / "attack.md").read_text().startswith("# Recovery attack on `rgb`")
    assert (out / "samples.png").is_file()
    code = main(
        [
            "attack",
            "--target",
            "rgb",
            "--public",
            str(data),
            "--victims",
            str(data),
            "--out",
            str(out),
            *common,
        ]
    )
    assert code == 2
    assert "identity-disjoint" in capsys.readouterr().err


def test_attack_command_multi_query_on_a_randomised_target(tmp_path):
    import json

    from facesynth.pipelines.cli import main
    from facesynth.privacy.api import build_privacy_method
    from facesynth.recognizers.methods import save_method

    data = _write_faces(tmp_path / "faces", [f"id{i}" for i in range(4)])
    save_method(build_privacy_method("dctdp", "tiny"), tmp_path / "dctdp")
    out = tmp_path / "report"
    args = ["attack", "--target", str(tmp_path / "dctdp"), "--public", str(data), "--out", str(out)]
    args += ["--decoder-steps", "2", "--decoder-widths", "4", "8", "--batch-size", "4", "--no-progress"]
    assert main([*args, "--no-ridge", "--multi-query-ks", "1", "2"]) == 0
    report = json.loads((out / "attack.json").read_text())
    assert report["multi_query"]["k"] == [1, 2]
    assert set(report["multi_query"]["by_k"]["2"]) >= {"decoder", "no_information"}
    assert "## Multi-query attacks" in (out / "attack.md").read_text()


def test_attack_on_a_small_input_target_with_112_faces_and_a_112_encoder(tmp_path):
    """The README's attack: a 32 px privacy model, 112 px dataset faces, a 112 px evaluator. The client
    protects faces at the model's input size, so the attack recovers those; the evaluator (and the
    identity loss) see them at the encoder's own size. It used to stop at the frontend's shape check."""
    import json

    from facesynth.pipelines.cli import main
    from facesynth.privacy.api import build_privacy_method
    from facesynth.recognizers.backbones import build_backbone, save_backbone
    from facesynth.recognizers.methods import save_method

    data = _write_faces(tmp_path / "faces", [f"id{i}" for i in range(4)])
    save_method(build_privacy_method("partialface", "tiny", {"input_size": [32, 32]}), tmp_path / "pf")
    torch.manual_seed(0)
    encoder = save_backbone(build_backbone("tiny"), tmp_path / "encoder")  # 112 x 112 input
    out = tmp_path / "report"
    args = ["attack", "--target", str(tmp_path / "pf"), "--public", str(data), "--out", str(out)]
    args += ["--encoder", f"torch:{encoder}", "--identity-weight", "0.1"]
    args += ["--decoder-steps", "2", "--decoder-widths", "4", "8", "--batch-size", "4", "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "attack.json").read_text())
    assert report["target"]["method"] == "partialface"
    for attacker in ("decoder", "ridge", "no_information"):
        assert math.isfinite(report["attackers"][attacker]["identity_leakage"])


def test_attack_command_gives_duetface_each_face_its_landmarks(tmp_path, monkeypatch):
    """DuetFace's client takes the ROI from each face's landmarks: the attacker's client must too
    (scaled to the model's 32 px input), else its payloads are not the ones a deployment sends."""
    import json

    from facesynth.pipelines.cli import main
    from facesynth.privacy.api import build_privacy_method
    from facesynth.privacy.duetface import DuetFace
    from facesynth.recognizers.methods import save_method

    data = _write_faces(tmp_path / "faces", [f"id{i}" for i in range(4)], landmarks=True)
    torch.manual_seed(0)
    method = build_privacy_method(
        "duetface", "tiny", {"input_size": [32, 32]}, client_widths=(4, 4, 8, 8, 16)
    )
    save_method(method, tmp_path / "duet")
    seen = []
    original = DuetFace.protect

    def spy(self, images, seed=None, landmarks=None):
        seen.append(landmarks)
        return original(self, images, seed=seed, landmarks=landmarks)

    monkeypatch.setattr(DuetFace, "protect", spy)
    out = tmp_path / "report"
    args = ["attack", "--target", str(tmp_path / "duet"), "--public", str(data), "--out", str(out)]
    args += ["--decoder-steps", "2", "--decoder-widths", "4", "8", "--batch-size", "4", "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "attack.json").read_text())
    assert report["target"]["landmarks"] == "per face"
    given = torch.cat([s for s in seen if s is not None])
    assert len(given) == sum(s.shape[0] for s in seen if s is not None) > 0
    assert torch.isfinite(given).all()  # every face the attack protects was found in the table
    # the points are the shard's, moved to the 32 px input: inside the crop, and not all the same
    assert given.min() > -1 and given.max() < 32 and given[:, 0].std(dim=0).min() > 0.5
    assert all(s is not None for s in seen)
    # without the column the report says so, and the client uses the template
    plain = _write_faces(tmp_path / "plain", [f"id{i}" for i in range(4)])
    seen.clear()
    assert main([*args[:4], str(plain), *args[5:]]) == 0
    assert json.loads((out / "attack.json").read_text())["target"]["landmarks"].startswith("template")
    assert all(s is None for s in seen)
