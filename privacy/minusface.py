"""MinusFace (Mi et al., CVPR 2024): trainable feature subtraction, channel shuffle, one image out.

Representations (TFace ``recognition/tasks/minusface/minusface.py``): x = e(X), the 192-channel block DCT of the face; a U-Net generator
g (:class:`~facesynth.privacy.unet.UNet`, 192 -> 192) regenerates it, x' = g(x); the residue
r = x - x' keeps identity but little appearance. The client shuffles r's 192 channels with a fresh
uniform random permutation per image and query and decodes the result with the inverse transform d:
the *protective image* X_p = d(shuffle(r)), 3 x 112 x 112, the only thing sent to the server.

Training is two runs of the one recognizer trainer (``facesynth train-recognizer --privacy minusface``):

- ``stage=1``: g and a recognizer f1 with a 192-channel stem train together on r (un-shuffled,
  not decoded); loss = margin loss(f1(r)) + ``l1_weight`` (5) * L1(X, d(x')) + ``sparsity_weight`` (0,
  as in the paper) * KL sparsity of g's latent. The README recommends g at 0.1x the recognizer's
  learning rate; TFace's branch for it never runs (a 'Minusface' typo in its ``minusface.py``). Here
  ``generator_lr_scale`` (0.1) is g's learning-rate multiplier: the shared trainer gives g its own
  parameter group (:meth:`optimizer_groups`), so it holds for SGD and AdamW alike.
- ``stage=2``: g is loaded from the stage-1 run (``stage1_from``) and frozen (eval mode, no gradient);
  a fresh recognizer with a ``3 * n_dup``-channel stem trains on X_p with the margin loss only.
  ``n_dup`` independent shuffles are decoded and concatenated (TFace hard-codes 1; the README's
  NUM_DUPS key is never read).

Decoding uses the frontend's ``"tface"`` decode (x1/8 bilinear, clamp) and returns [-1, 1] where TFace
returns [0, 1]: an affine relabelling of the same image, documented in the frontend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.optim_groups import OptimizerGroup
from facesynth.privacy.api import PrivacyMethod, register_privacy_method
from facesynth.privacy.duetface import load_submodule_state
from facesynth.privacy.frequency_frontend import NUM_CHANNELS
from facesynth.privacy.payload import Payload
from facesynth.privacy.unet import UNet, sparsity_kl

STAGES = (1, 2)


def random_permutations(
    batch: int, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(batch, n) independent uniform permutations of 0..n-1."""
    keys = torch.rand(batch, n, generator=generator, device=device)
    return torch.argsort(keys, dim=1)


@register_privacy_method("minusface")
class MinusFace(PrivacyMethod):
    """MinusFace recognizer (see the module docstring).

    Args:
        stage: 1 (co-train generator and a 192-channel recognizer on the residue) or 2 (frozen
            generator, fresh recognizer on the shuffled, decoded protective image).
        stage1_from: stage-1 run folder whose generator is loaded for stage 2 (not recorded in the
            saved config, whose own weights hold the generator).
        generator_widths: U-Net level widths (paper: 64/128/256/512/1024, ~34.6 M parameters).
        l1_weight: weight of L1(X, d(g(x))) in stage 1 (paper: 5).
        sparsity_weight, sparsity_target: KL sparsity on g's latent (paper: weight 0).
        generator_lr_scale: learning-rate multiplier of g in stage 1 (README: g at 0.1x the LR).
        generator_residual: our option, not the paper's: g predicts a correction to its input,
            x' = x + g(x), so the residue starts at -g(x) instead of x. The paper's g must first learn
            to copy 192 raw DCT channels (DC in the hundreds) before the residue can shed the face; on
            short budgets it does not (40 steps: L1 flat, the residue keeps the whole DC and stage 2
            verifies at 0.600), while the residual form regenerates x at once (L1 0.011, DC left 0.3 %).
            Default False (the paper's form).
        n_dup: shuffles decoded and concatenated per query (3 * n_dup channels reach the server).
        frontend_mode, key_seed, eval_seed: see :class:`~facesynth.privacy.api.PrivacyMethod`.
    """

    randomised = True

    #: a build-time source of weights, not an option: the saved weights already hold that part
    ignore_for_config = ["stage1_from"]

    def __init__(
        self,
        backbone: str = "r18",
        backbone_kwargs: Mapping[str, Any] | None = None,
        *,
        stage: int = 2,
        stage1_from: str | None = None,
        generator_widths: Sequence[int] = (64, 128, 256, 512, 1024),
        l1_weight: float = 5.0,
        sparsity_weight: float = 0.0,
        sparsity_target: float = 0.01,
        generator_lr_scale: float = 0.1,
        generator_residual: bool = False,
        n_dup: int = 1,
        frontend_mode: str = "tface",
        key_seed: int = 0,
        eval_seed: int = 0,
    ):
        if stage not in STAGES:
            raise ConfigError(f"minusface option 'stage': {stage!r} is not one of {STAGES}")
        if int(n_dup) < 1:
            raise ConfigError(f"minusface option 'n_dup': {n_dup!r} must be at least 1")
        if generator_lr_scale <= 0:
            raise ConfigError(f"minusface option 'generator_lr_scale': {generator_lr_scale!r} must be > 0")
        self.stage = int(stage)
        self.n_dup = int(n_dup)
        super().__init__(
            backbone,
            backbone_kwargs,
            in_channels=NUM_CHANNELS if self.stage == 1 else 3 * self.n_dup,
            frontend_mode=frontend_mode,
            key_seed=key_seed,
            eval_seed=eval_seed,
        )
        self.generator = UNet(NUM_CHANNELS, NUM_CHANNELS, tuple(int(w) for w in generator_widths))
        self.l1_weight = float(l1_weight)
        self.sparsity_weight = float(sparsity_weight)
        self.sparsity_target = float(sparsity_target)
        self.generator_lr_scale = float(generator_lr_scale)
        self.generator_residual = bool(generator_residual)
        self._last_aux: dict[str, torch.Tensor] = {}
        if stage1_from is not None:
            self.generator.load_state_dict(
                load_submodule_state(stage1_from, "generator.", "minusface stage1_from")
            )
        if self.stage == 2:
            self.generator.requires_grad_(False)

    def train(self, mode: bool = True) -> MinusFace:
        super().train(mode)
        if self.stage == 2:
            self.generator.eval()
        return self

    def key_material(self) -> dict[str, Any]:
        return {"stage": self.stage, "n_dup": self.n_dup}

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """Stage 1: the generator at ``generator_lr_scale`` times the trainer's lr (README: 0.1x)."""
        return [OptimizerGroup("generator.", lr_scale=self.generator_lr_scale)] if self.stage == 1 else []

    def residue(self, images: torch.Tensor):
        """(x, x', r = x - x', latent) for a batch of images."""
        with torch.no_grad():
            x = self.frontend(images)
        regenerated, latent = self.generator(x, return_latent=True)
        if self.generator_residual:
            regenerated = x + regenerated
        return x, regenerated, x - regenerated, latent

    def protective_image(
        self, residue: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """X_p: ``n_dup`` independently shuffled residues, each decoded to (3, S, S), concatenated."""
        batch = residue.shape[0]
        outs = []
        for _ in range(self.n_dup):
            perm = random_permutations(batch, NUM_CHANNELS, generator, residue.device)
            shuffled = torch.gather(residue, 1, perm[:, :, None, None].expand_as(residue))
            outs.append(self.frontend.decode(shuffled, method="tface"))
        return torch.cat(outs, dim=1)

    def client_transform(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if self.stage == 2:
            with torch.no_grad():
                _, _, r, _ = self.residue(images)
                self._last_aux = {}
                return self.protective_image(r, generator)
        _, regenerated, r, latent = self.residue(images)
        aux = {}
        if torch.is_grad_enabled() and self.training:
            decoded = self.frontend.decode(regenerated, method="tface")
            aux["minusface_l1"] = self.l1_weight * F.l1_loss(decoded, images)
            if self.sparsity_weight > 0:
                aux["minusface_sparsity"] = self.sparsity_weight * sparsity_kl(latent, self.sparsity_target)
        self._last_aux = aux
        return r

    def aux_losses(self) -> dict[str, torch.Tensor]:
        aux, self._last_aux = self._last_aux, {}
        return aux

    @torch.no_grad()
    def protect(
        self,
        images: torch.Tensor,
        seed: int | torch.Generator | None = None,
        landmarks: torch.Tensor | None = None,
    ) -> Payload:
        """Client side of stage 2; a stage-1 model is refused: its payload would be the raw residue."""
        if self.stage == 1:
            raise FacesynthError(
                "minusface: this is a stage-1 model, which cannot be deployed: its payload would be the "
                f"un-shuffled {NUM_CHANNELS}-channel residue, not the protective image. Train stage 2 "
                "(method option stage=2, stage1_from=<this run's folder>) and deploy that model"
            )
        return super().protect(images, seed, landmarks)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 1: the recognizer on the residue (training progress only, never a deployed path)."""
        if self.stage == 1:
            return self.backbone(self.residue(images)[2])
        return super().embed(images, landmarks)
