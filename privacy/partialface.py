"""PartialFace (Mi et al., ICCV 2023): recognition from random subsets of high-frequency channels.

Client: frontend -> prune the 30 low-frequency channels (v + u <= 3 per colour component) -> of the
54 kept frequencies send one subset of 9 (x 3 colour components = 27 channels) under one of the
published permutations. Server: an IR backbone with a 27-channel stem; no other networks.

Training draws a subset and a permutation per image; by default (as in TFace) an identity may only
use ``subsets_per_identity`` (3) of the 6 subsets, chosen by ``label mod C(6, 3)``, so the model never
sees all subsets of one identity. Inference is label-free: the client draws one subset and one
permutation uniformly from the whole published set, and matching works across subsets because
training mixes them within identities.

Choices and deviations from TFace (``partialface/``), all options:

- ``tables="tface"`` uses TFace's hard-coded selection/permutation tables; ``"random"`` draws tables
  of the same form from ``key_seed`` (TFace's comments say they can be random per model). The tables'
  hash is part of the payload key, so payloads made with other tables are refused.
- ``label_conditioned=False`` draws the training subset uniformly from all subsets (the "random r
  subsets per image" variant, which may be closer to the paper; unverified).
- TFace repeats every training line ``NUM_AUG=3`` times per epoch; we do not tamper with the data
  order: give the trainer three times the epochs/steps for the same budget in data passes.
- Only the selected 27 channels are gathered per sample (TFace builds all 6 subsets per batch).
- ``subset_size`` / ``num_subsets`` are honoured everywhere (TFace hard-codes 6 x 9 in the batch code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from facesynth.core.errors import ConfigError
from facesynth.privacy.api import PrivacyMethod, register_privacy_method
from facesynth.privacy.channel_policies import (
    PARTIALFACE_PRUNED,
    TFACE_PERMUTATIONS,
    TFACE_SUBSETS,
    PartialFacePolicy,
    complement,
    random_partialface_tables,
)

TABLES = ("tface", "random")


@register_privacy_method("partialface")
class PartialFace(PrivacyMethod):
    """PartialFace recognizer: 27 randomly chosen, permuted high-frequency channels -> IR backbone.

    Args:
        tables: ``"tface"`` (TFace's 6 x 9 subsets and 3 permutations) or ``"random"`` (from ``key_seed``).
        num_subsets, subset_size, num_permutations: table geometry for ``tables="random"``.
        subsets_per_identity: r, subsets an identity may use in label-conditioned training.
        label_conditioned: restrict training subsets by label (TFace) or draw from all.
        frontend_mode, key_seed, eval_seed: see :class:`~facesynth.privacy.api.PrivacyMethod`.
    """

    randomised = True

    def __init__(
        self,
        backbone: str = "r50",
        backbone_kwargs: Mapping[str, Any] | None = None,
        *,
        tables: str = "tface",
        num_subsets: int = 6,
        subset_size: int = 9,
        num_permutations: int = 3,
        subsets_per_identity: int = 3,
        label_conditioned: bool = True,
        frontend_mode: str = "tface",
        key_seed: int = 0,
        eval_seed: int = 0,
    ):
        if tables == "tface":
            subsets, perms = TFACE_SUBSETS, TFACE_PERMUTATIONS
        elif tables == "random":
            num_kept = len(complement(PARTIALFACE_PRUNED))
            subsets, perms = random_partialface_tables(
                key_seed, num_subsets, subset_size, num_permutations, num_kept
            )
        else:
            raise ConfigError(f"partialface: tables must be one of {TABLES}, got {tables!r}")
        self.policy = PartialFacePolicy(subsets, perms, PARTIALFACE_PRUNED, subsets_per_identity)
        super().__init__(
            backbone,
            backbone_kwargs,
            in_channels=self.policy.payload_channels,
            frontend_mode=frontend_mode,
            key_seed=key_seed,
            eval_seed=eval_seed,
        )
        self.tables = tables
        self.label_conditioned = bool(label_conditioned)

    def client_transform(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            coeffs = self.frontend(images)
        cond = labels if self.label_conditioned else None
        gen = generator
        if gen is not None and gen.device.type != "cpu":
            # the draw is made on the CPU (tiny); derive a CPU stream from the device generator
            gen = torch.Generator().manual_seed(
                int(torch.randint(2**62, (1,), generator=gen, device=gen.device))
            )
        return self.policy.select_random(coeffs, cond, gen)

    def key_material(self) -> dict[str, Any]:
        return {"tables": self.policy.table_id()}
