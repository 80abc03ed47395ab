"""Multi-query attacks: k payloads of one face combined (DCTDP mean, PartialFace union, MinusFace mean)."""

from __future__ import annotations

import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.privacy.api import build_privacy_method
from facesynth.privacy.attacks import AttackConfig, DecoderConfig
from facesynth.privacy.multi_query import combined_view, multi_query_attack, query_seeds

SIZE = 32


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def _tiny_attack(steps: int) -> AttackConfig:
    return AttackConfig(
        decoder=DecoderConfig(block_out_channels=(8, 16), steps=steps, batch_size=4, warmup_steps=1),
        ridge=False,
        batch_size=4,
        scale_batches=1,
    )


def _method(name: str, **kwargs):
    torch.manual_seed(0)
    return build_privacy_method(name, "tiny", {"input_size": [SIZE, SIZE]}, **kwargs).eval()


def test_query_seeds_are_distinct_per_batch_and_bounded():
    assert len(set(query_seeds(3, 16)) | set(query_seeds(4, 16))) == 32
    with pytest.raises(FacesynthError, match="k must be"):
        query_seeds(0, 0)


def test_averaging_dctdp_payloads_removes_noise_as_one_over_sqrt_k():
    method = _method("dctdp", epsilon_mean=0.5)
    images = _faces(2)
    clean = method.clean_coefficients(images) + method.noise.locs  # what averaging converges to
    errors = {
        k: (combined_view(method, images, 7, k) - clean).pow(2).mean().sqrt().item() for k in (1, 4, 16)
    }
    assert errors[4] < 0.6 * errors[1] and errors[16] < 0.6 * errors[4]  # ideal: 0.5 each


def test_partialface_union_places_each_payload_at_its_frequencies():
    method = _method("partialface")
    images = _faces(3)
    coeffs = method.frontend(images)
    kept = list(method.policy.channels)
    one, many = combined_view(method, images, 5, 1), combined_view(method, images, 5, 16)
    assert one.shape == many.shape == (3, 162 + 54, SIZE, SIZE)
    seen_one, seen_many = one[:, 162:, 0, 0], many[:, 162:, 0, 0]
    assert torch.all(seen_one.sum(1) == 9)  # one subset of nine frequencies per query
    assert torch.all(seen_many.sum(1) > seen_one.sum(1))  # the union grows with k
    # the oracle's placement is right: observed channels hold exactly the face's coefficients
    values = many[:, :162]
    observed = seen_many.repeat(1, 3).bool()  # same frequencies in every colour component
    truth = coeffs[:, kept]
    assert torch.allclose(values[observed], truth[observed], atol=1e-4)
    assert values[~observed].abs().max() == 0


def test_minusface_mean_of_shuffles_and_deterministic_methods_refused():
    method = _method("minusface", generator_widths=[4, 8])
    images = _faces(2)
    assert combined_view(method, images, 0, 4).shape == (2, 3, SIZE, SIZE)
    assert not torch.allclose(combined_view(method, images, 0, 1), combined_view(method, images, 0, 4))
    with pytest.raises(FacesynthError, match="deterministic"):
        combined_view(_method("duetface", client_widths=[4, 4, 8, 8, 16]), images, 0, 4)


def test_multi_query_attack_reports_every_k():
    method = _method("dctdp")
    public, victims = _faces(8, 1), _faces(4, 2)
    config = _tiny_attack(steps=3)
    report = multi_query_attack(method, public, victims, torch.tensor([0, 0, 1, 1]), config, ks=(1, 2))
    assert report["k"] == [1, 2] and set(report["by_k"]) == {"1", "2"}
    for metrics in report["by_k"].values():
        assert {"decoder", "no_information"} <= set(metrics) and metrics["decoder"]["psnr"] > 0


def test_k1_reuses_the_single_query_attack_for_averaging_methods_only():
    """The mean of one view is the view: DCTDP's k = 1 is the single-query attack, not trained twice;
    PartialFace's k = 1 union view is a different attack and runs."""
    public, victims = _faces(8, 1), _faces(4, 2)
    config = _tiny_attack(steps=2)
    single = {"decoder": {"psnr": -1.0}}
    labels = torch.tensor([0, 0, 1, 1])
    dctdp = multi_query_attack(
        _method("dctdp"), public, victims, labels, config, ks=(1, 2), single_query=single
    )
    assert dctdp["by_k"]["1"] is single and dctdp["by_k"]["2"]["decoder"]["psnr"] > 0
    partial = multi_query_attack(
        _method("partialface"), public, victims, labels, config, ks=(1,), single_query=single
    )
    assert partial["by_k"]["1"] is not single and partial["by_k"]["1"]["decoder"]["psnr"] > 0
