"""Margin heads: ArcFace, CosFace and the combined margin, with a registry by name.

A margin head turns cosine logits (embedding . class centre, both L2-normalised, in [-1, 1]) into
scaled logits for a softmax cross-entropy: the *target* logit becomes ``cos(m1 * theta + m2) - m3``
and every logit is multiplied by ``s``. Presets follow arcface_torch (``recognition/arcface_torch/losses.py``
and ``configs/``): ArcFace ``(1, 0.5, 0)``, CosFace ``(1, 0, 0.4)``, ``s = 64``.

Rows whose label is ``-1`` (their class lives on another process under Partial FC) get no margin.

Gradient convention: arcface_torch changes the target logit under ``no_grad`` so the gradient passes
through as if the margin were a constant shift (``straight_through=True``, the default here). With
``straight_through=False`` the gradient flows through ``arccos``/``cos`` exactly (the angle is kept a
hair away from 0 and pi so ``arccos`` stays differentiable). arcface_torch only implements
``m1 = 1``; any (m1, m2, m3) works here, which is what the ``combined`` preset uses. The combined
preset's default margins (1.0, 0.3, 0.2) are those of insightface's older combined-margin recipe
**[unverified for arcface_torch]**; set them explicitly when it matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from facesynth.core.errors import ConfigError
from facesynth.core.registry import Registry

_EPS = 1e-7


class CombinedMarginLoss(nn.Module):
    """Apply ``s * (cos(m1*theta + m2) - m3)`` on target logits, ``s * cos`` elsewhere.

    Args:
        s: scale (64 in arcface_torch).
        m1: multiplicative angular margin (SphereFace-style; 1 = none).
        m2: additive angular margin (ArcFace: 0.5).
        m3: additive cosine margin (CosFace: 0.4).
        interclass_filtering_threshold: when > 0, negative logits above it are zeroed for rows whose
            target cosine is also above it (tolerates label noise; arcface_torch option, 0 = off).
        straight_through: see the module docstring.
    """

    def __init__(
        self,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        interclass_filtering_threshold: float = 0.0,
        straight_through: bool = True,
    ):
        super().__init__()
        if s <= 0:
            raise ConfigError(f"margin scale s must be > 0, got {s}")
        if m1 <= 0:
            raise ConfigError(f"multiplicative margin m1 must be > 0, got {m1}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.straight_through = straight_through

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits``: (N, C) cosines; ``labels``: (N,) class index into C, or -1. Returns scaled logits."""
        logits = logits.float().clamp(-1.0, 1.0)
        rows = torch.nonzero(labels != -1, as_tuple=True)[0]
        cols = labels[rows]
        if self.interclass_filtering_threshold > 0:
            with torch.no_grad():
                dirty = logits > self.interclass_filtering_threshold
                dirty[rows, cols] = False
                keep_rows = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
                keep_rows[rows] = logits[rows, cols] > self.interclass_filtering_threshold
                mask = dirty & keep_rows[:, None]
            logits = logits.masked_fill(mask, 0.0)
        target = logits[rows, cols]
        if self.straight_through:
            with torch.no_grad():
                shift = self._margin(target) - target
            new_target = target + shift
        else:
            new_target = self._margin(target)
        logits = logits.index_put((rows, cols), new_target)
        return logits * self.s

    def _margin(self, cosine: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cosine - self.m3
        theta = torch.acos(cosine.clamp(-1.0 + _EPS, 1.0 - _EPS))
        return torch.cos(self.m1 * theta + self.m2) - self.m3


HeadFactory = Callable[..., CombinedMarginLoss]
#: Margin-head factories by name; the presets below register when this module is imported.
HEADS: Registry[HeadFactory] = Registry("margin head")


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Decorator: make a margin-head factory buildable by ``name``."""
    return HEADS.register(name)


def available_heads() -> list[str]:
    """Registered margin-head names, sorted."""
    return HEADS.names()


def build_head(name: str, **kwargs: Any) -> CombinedMarginLoss:
    """Build a margin head by name, e.g. ``build_head("arcface", s=32)``."""
    factory = HEADS.get(name)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"margin head {name!r}: bad options {sorted(kwargs)} ({exc})") from None


@register_head("arcface")
def arcface(s: float = 64.0, m: float = 0.5, **kwargs: Any) -> CombinedMarginLoss:
    """Additive angular margin: cos(theta + m), m = 0.5 (arcface_torch ``margin_list=(1.0, 0.5, 0.0)``)."""
    return CombinedMarginLoss(s=s, m1=1.0, m2=m, m3=0.0, **kwargs)


@register_head("cosface")
def cosface(s: float = 64.0, m: float = 0.4, **kwargs: Any) -> CombinedMarginLoss:
    """Additive cosine margin: cos(theta) - m, m = 0.4 (arcface_torch ``margin_list=(1.0, 0.0, 0.4)``)."""
    return CombinedMarginLoss(s=s, m1=1.0, m2=0.0, m3=m, **kwargs)


@register_head("combined")
def combined(
    s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2, **kwargs: Any
) -> CombinedMarginLoss:
    """cos(m1*theta + m2) - m3 with all three margins free (defaults: see the module docstring)."""
    return CombinedMarginLoss(s=s, m1=m1, m2=m2, m3=m3, **kwargs)


@register_head("softmax")
def softmax(s: float = 64.0, **kwargs: Any) -> CombinedMarginLoss:
    """Normalised softmax without margin (a baseline): s * cos(theta)."""
    return CombinedMarginLoss(s=s, m1=1.0, m2=0.0, m3=0.0, **kwargs)
