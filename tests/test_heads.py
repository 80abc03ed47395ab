"""Margin heads: presets, target-only margins, the -1 rule, straight-through vs exact gradients."""

from __future__ import annotations

import math

import pytest
import torch

from facesynth.core.errors import ConfigError
from facesynth.recognizers.heads import CombinedMarginLoss, available_heads, build_head


def test_presets_and_registry():
    assert {"arcface", "cosface", "combined"} <= set(available_heads())
    arc, cos = build_head("arcface"), build_head("cosface")
    assert (arc.s, arc.m1, arc.m2, arc.m3) == (64.0, 1.0, 0.5, 0.0)
    assert (cos.s, cos.m1, cos.m2, cos.m3) == (64.0, 1.0, 0.0, 0.4)
    assert build_head("arcface", s=32).s == 32
    with pytest.raises(ConfigError, match="unknown margin head 'sphere'"):
        build_head("sphere")
    with pytest.raises(ConfigError, match="s must be > 0"):
        build_head("cosface", s=0)


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_margin_only_on_targets(name):
    head = build_head(name, s=10.0)
    cosine = torch.tensor([[0.2, 0.5, -0.3], [0.9, 0.1, 0.4], [0.3, 0.3, 0.3]])
    labels = torch.tensor([1, 0, -1])
    out = head(cosine, labels)
    theta = math.acos(0.5)
    expected_target = math.cos(head.m1 * theta + head.m2) - head.m3
    assert out[0, 1].item() == pytest.approx(10.0 * expected_target, abs=1e-5)
    assert out[0, 1] < 10.0 * 0.5  # the margin makes the target harder
    mask = torch.ones_like(cosine, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = False
    torch.testing.assert_close(out[mask], 10.0 * cosine[mask])  # non-targets and label -1 rows untouched


def test_straight_through_vs_exact_gradient():
    cosine = torch.tensor([[0.6, 0.1]], requires_grad=True)
    labels = torch.tensor([0])
    CombinedMarginLoss(s=1.0, m2=0.5)(cosine, labels)[0, 0].backward()
    assert cosine.grad[0, 0].item() == pytest.approx(1.0)  # margin treated as a constant shift
    cosine.grad = None
    CombinedMarginLoss(s=1.0, m2=0.5, straight_through=False)(cosine, labels)[0, 0].backward()
    theta = math.acos(0.6)
    exact = math.sin(theta + 0.5) / math.sin(theta)  # d cos(theta + m) / d cos(theta)
    assert cosine.grad[0, 0].item() == pytest.approx(exact, rel=1e-4)


def test_interclass_filtering_zeroes_confusable_negatives():
    head = CombinedMarginLoss(s=1.0, m2=0.0, interclass_filtering_threshold=0.5)
    cosine = torch.tensor([[0.8, 0.7, 0.1], [0.2, 0.7, 0.1]])
    out = head(cosine, torch.tensor([0, 0]))
    assert out[0, 1].item() == 0.0  # target above threshold: the suspicious negative is dropped
    assert out[1, 1].item() == pytest.approx(0.7)  # target below threshold: kept
