"""DuetFace (Mi et al., ACM MM 2022): collaborative inference by splitting the frequency channels.

The block-DCT spectrum (192 channels, :mod:`facesynth.privacy.frequency_frontend`) is split per colour component: the 10 "crucial"
low frequencies k in {0,1,2,3,4,5,8,9,16,24} (30 channels) stay on the client, where a small
MobileFaceNet-style network runs on them; the other 54 per component (162 channels) go to the server,
whose IResNet has a 162-channel stem. After each of the server's four stages an *interactive block*
modulates the server features with a mask made on the client from its own activations and a facial
region of interest (TFace ``recognition/tasks/duetface/duetface_model.py``):

1. client activation -> learned 1x1 projection to one channel (TFace re-creates a random 1x1 conv on
   every forward pass, a bug in its ``duetface_model.py``; a learned projection followed by the
   channel average is the same linear map, so we learn one) -> resize to the server stage's size;
2. per-sample min-max normalisation (with an epsilon, TFace divides by zero on blank masks);
3. multiply by the ROI mask (resized bilinearly, ``align_corners=True``), normalise again;
4. server: ``y = sigmoid(z) * (1 + w * m)`` with a learned scalar ``w`` initialised to 0
   (``interaction="tface"``, the released code), or ``y = z * (1 + w * m)`` (``"residual"``,
   an unverified alternative that keeps the IResNet's unsquashed features).

As the paper's figure (not the code) has it, the client sends the *masks*, not its activations:
the payload is the 162 server channels plus four masks (56^2, 28^2, 14^2, 7^2 at 112 x 112 input).

ROI: TFace runs PFLD (98 landmarks) and rasterises their convex hull. We use the project's own
5-point landmarks instead (:mod:`facesynth.privacy.roi_mask`), one set per face: the shards' optional
``landmarks`` column (written by the aligner and the parametric renderer) reaches training (the
trainer passes it to :meth:`DuetFace.forward`), :meth:`DuetFace.protect` and evaluation
(:func:`facesynth.privacy.evaluation.evaluate_privacy_method` with a benchmark that carries
landmarks). Faces without landmarks (older shards, .bin benchmarks) use the ArcFace template, where
every aligned face's landmarks lie by construction. Documented deviation; PFLD weights are not
distributed (TFace issue #88).

Training (TFace ``duetface/train.py`` and ``train.yaml``) is two runs of the one recognizer trainer:

- ``stage="client"``: the client network alone, trained with the trainer's margin head on the 30
  crucial channels (its embeddings are what the trainer sees);
- ``stage="server"``: the client is loaded from the stage-1 run (``client_from``) and frozen, and
  the server backbone, interactive weights and mask projections train with the margin loss.

Each stage gets its own trainer run and step budget; reports state both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.privacy.api import PrivacyMethod, register_privacy_method
from facesynth.privacy.channel_policies import DUETFACE_CLIENT, SplitPolicy
from facesynth.privacy.payload import Payload
from facesynth.privacy.roi_mask import roi_mask_from_landmarks

STAGES = ("client", "server")
INTERACTIONS = ("tface", "residual")
MASK_NAMES = ("mask1", "mask2", "mask3", "mask4")


def _minmax(m: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    return (m - lo.view(-1, 1, 1, 1)) / (hi - lo).clamp_min(eps).view(-1, 1, 1, 1)


class _SeparableBlock(nn.Sequential):
    """1x1 expand -> depthwise 3x3 (carries the stride) -> 1x1 project, BN + PReLU between."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride=stride, padding=1, groups=cout, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class DuetFaceClient(nn.Module):
    """Compact MobileFaceNet-style client on the crucial channels.

    Stem 3x3 stride 2 (112 -> 56), then separable blocks down to 28, 14, 7 and a 1x1 widening at 7;
    the four tapped activations sit where TFace taps MobileFaceNet (64@28, 128@14, 128@7, 512@7 at
    the default widths). Head: global depthwise conv -> BN -> Linear -> BatchNorm1d, as MobileFaceNet.
    Returns (embedding, [four activations]).
    """

    def __init__(
        self,
        in_channels: int = 30,
        widths: Sequence[int] = (64, 64, 128, 128, 512),
        embedding_size: int = 512,
        input_size: int = 112,
    ):
        super().__init__()
        w = [int(x) for x in widths]
        if len(w) != 5:
            raise ConfigError(f"client_widths needs 5 widths (stem, 28, 14, 7, final), got {list(widths)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.PReLU(w[0]),
        )
        self.block1 = _SeparableBlock(w[0], w[1], 2)  # 28
        self.block2 = _SeparableBlock(w[1], w[2], 2)  # 14
        self.block3 = _SeparableBlock(w[2], w[3], 2)  # 7
        self.block4 = nn.Sequential(
            nn.Conv2d(w[3], w[4], 1, bias=False), nn.BatchNorm2d(w[4]), nn.PReLU(w[4])
        )
        side = input_size
        for _ in range(4):
            side = (side + 1) // 2
        self.head_dw = nn.Conv2d(w[4], w[4], side, groups=w[4], bias=False)
        self.head_bn = nn.BatchNorm2d(w[4])
        self.fc = nn.Linear(w[4], embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        self.tap_channels = (w[1], w[2], w[3], w[4])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        a1 = self.block1(x)
        a2 = self.block2(a1)
        a3 = self.block3(a2)
        a4 = self.block4(a3)
        emb = self.features(self.fc(torch.flatten(self.head_bn(self.head_dw(a4)), 1)))
        return emb, [a1, a2, a3, a4]


def _stage_sides(input_size: int) -> tuple[int, int, int, int]:
    sides, side = [], input_size
    for _ in range(4):
        side = (side + 1) // 2
        sides.append(side)
    return tuple(sides)


def load_submodule_state(folder: str | os.PathLike, prefix: str, what: str) -> dict[str, torch.Tensor]:
    """The ``prefix``-ed weights of a saved method folder, with the prefix stripped."""
    from pathlib import Path

    from facesynth.recognizers.backbones import read_state_dict
    from facesynth.recognizers.methods import METHOD_WEIGHTS

    path = Path(folder) / METHOD_WEIGHTS
    if not path.is_file():
        raise FacesynthError(f"{what}: {path} does not exist (expected a trained method folder)")
    state = read_state_dict(path)
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        raise FacesynthError(f"{what}: {path} has no {prefix!r} weights (a run of another method or stage?)")
    return picked


@register_privacy_method("duetface")
class DuetFace(PrivacyMethod):
    """DuetFace recognizer (see the module docstring for the protocol and deviations).

    Args:
        stage: ``"client"`` (pre-train the client network) or ``"server"`` (train the server with
            the frozen client).
        client_from: stage-"client" run folder whose client weights are loaded (``stage="server"``);
            not recorded in the saved config, whose own weights hold the client.
        client_frequencies: the crucial frequencies kept on the client (TFace's 10 by default).
        client_widths: client network widths (stem, 28, 14, 7, final); TFace's MobileFaceNet taps
            have 64/128/128/512.
        interaction: ``"tface"`` (``sigmoid(z) * (1 + w m)``) or ``"residual"`` (``z * (1 + w m)``).
        roi_expand: landmark hull scale about its centroid (see :mod:`facesynth.privacy.roi_mask`).
        frontend_mode, key_seed, eval_seed: see :class:`~facesynth.privacy.api.PrivacyMethod`.
    """

    uses_landmarks = True
    #: a build-time source of weights, not an option: the saved weights already hold that part
    ignore_for_config = ["client_from"]

    def __init__(
        self,
        backbone: str = "r50",
        backbone_kwargs: Mapping[str, Any] | None = None,
        *,
        stage: str = "server",
        client_from: str | None = None,
        client_frequencies: Sequence[int] = DUETFACE_CLIENT,
        client_widths: Sequence[int] = (64, 64, 128, 128, 512),
        interaction: str = "tface",
        roi_expand: float = 1.8,
        frontend_mode: str = "tface",
        key_seed: int = 0,
        eval_seed: int = 0,
    ):
        if stage not in STAGES:
            raise ConfigError(f"duetface option 'stage': {stage!r} is not one of {STAGES}")
        if interaction not in INTERACTIONS:
            raise ConfigError(f"duetface option 'interaction': {interaction!r} is not one of {INTERACTIONS}")
        self.policy = SplitPolicy(client_frequencies)
        super().__init__(
            backbone,
            backbone_kwargs,
            in_channels=self.policy.num_channels,
            frontend_mode=frontend_mode,
            key_seed=key_seed,
            eval_seed=eval_seed,
        )
        for attr in ("conv1", "bn1", "prelu", "layer1", "layer2", "layer3", "layer4", "forward_head"):
            if not hasattr(self.backbone, attr):
                raise ConfigError(f"duetface needs an IResNet-style server backbone (it has no {attr!r})")
        self.stage = stage
        self.interaction = interaction
        self.roi_expand = float(roi_expand)
        grid = self.frontend.grid
        self.client = DuetFaceClient(
            len(self.policy.client_channels), client_widths, self.embedding_size, grid
        )
        self.projections = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1) for c in self.client.tap_channels)
        self.interaction_weights = nn.Parameter(torch.zeros(4))
        self.mask_sides = _stage_sides(grid)
        self._stash: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._landmarks: torch.Tensor | None = None
        if client_from is not None:
            self.client.load_state_dict(load_submodule_state(client_from, "client.", "duetface client_from"))
        if stage == "server":
            self.client.requires_grad_(False)
        else:
            for module in (self.backbone, self.projections):
                module.requires_grad_(False)
            self.interaction_weights.requires_grad_(False)

    def train(self, mode: bool = True) -> DuetFace:
        super().train(mode)
        if self.stage == "server":
            self.client.eval()  # frozen: keep its BatchNorm statistics
        return self

    # -- client ----------------------------------------------------------------------------------
    def key_material(self) -> dict[str, Any]:
        return {
            "client_frequencies": list(self.policy.client_frequencies),
            "interaction": self.interaction,
            "roi_expand": self.roi_expand,
        }

    def extras_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: (1, side, side) for name, side in zip(MASK_NAMES, self.mask_sides, strict=True)}

    def roi(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Per-image ROI masks from the landmarks given to :meth:`protect`, else the ArcFace template."""
        landmarks = self._landmarks
        if landmarks is not None and landmarks.shape[0] != batch_size:
            raise FacesynthError(f"duetface: {landmarks.shape[0]} landmark sets for {batch_size} images")
        return roi_mask_from_landmarks(
            landmarks, batch_size=batch_size, size=self.frontend.grid, expand=self.roi_expand
        ).to(device)

    def client_side(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(server channels (B, 162, g, g), masks by name, client embedding)."""
        with torch.no_grad():
            server_x, client_x = self.policy.split(self.frontend(images))
        emb, acts = self.client(client_x)
        roi = self.roi(images.shape[0], images.device)
        masks = {}
        for name, proj, act, side in zip(MASK_NAMES, self.projections, acts, self.mask_sides, strict=True):
            m = proj(act.detach())
            m = _minmax(F.interpolate(m, size=(side, side), mode="bilinear", align_corners=False))
            r = F.interpolate(roi.to(m.dtype), size=(side, side), mode="bilinear", align_corners=True)
            masks[name] = _minmax(m * r)
        return server_x, masks, emb

    def client_transform(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        server_x, masks, _ = self.client_side(images)
        self._stash = (images, masks)
        return server_x

    def client_extras(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._stash is None or self._stash[0] is not images:
            self.client_transform(images)
        masks = self._stash[1]
        self._stash = None
        return masks

    @torch.no_grad()
    def protect(
        self,
        images: torch.Tensor,
        seed: int | torch.Generator | None = None,
        landmarks: torch.Tensor | None = None,
    ) -> Payload:
        """Client side; ``landmarks`` (B, K, 2) pixel coordinates set the ROI (default: template)."""
        with self._landmarks_set(landmarks):
            return super().protect(images, seed)

    @contextlib.contextmanager
    def _landmarks_set(self, landmarks: torch.Tensor | None):
        self._landmarks = None if landmarks is None else torch.as_tensor(landmarks)
        try:
            yield
        finally:
            self._landmarks = None

    # -- server ----------------------------------------------------------------------------------
    def server_forward(self, tensor: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        s = self.backbone
        x = s.prelu(s.bn1(s.conv1(tensor)))
        for i, layer in enumerate((s.layer1, s.layer2, s.layer3, s.layer4)):
            x = layer(x)
            m = extras[MASK_NAMES[i]]
            if m.shape[-2:] != x.shape[-2:]:
                raise FacesynthError(
                    f"duetface: {MASK_NAMES[i]} is {tuple(m.shape[-2:])} but server stage {i + 1} is {tuple(x.shape[-2:])}"
                )
            gate = 1 + self.interaction_weights[i] * m
            x = torch.sigmoid(x) * gate if self.interaction == "tface" else x * gate
        return s.forward_head(x)

    # -- training ----------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training path; ``landmarks`` (B, K, 2) per face (the trainer passes the shards' column)."""
        if self.stage == "client":
            self.frontend.check_images(images)
            with torch.no_grad():
                _, client_x = self.policy.split(self.frontend(images))
            return self.client(client_x)[0], {}
        with self._landmarks_set(landmarks):
            return super().forward(images, labels)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Stage "client": the client's own embedding (what its pre-training optimises)."""
        if self.stage == "client":
            return self.forward(images)[0]
        return super().embed(images, landmarks)
