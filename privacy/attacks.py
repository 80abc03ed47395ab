"""Recovery attacks on privacy-preserving payloads, and the metrics that score them.

Threat model (white box; this harness's own design, in the spirit of the papers' recovery attacks): the attacker knows the method and its trained client
side, runs the client on a public face set whose identities are disjoint from the victims', and so
holds (payload, image) pairs. It sees exactly what the server sees. Two attackers are trained on those
pairs and then applied to victims' payloads:

- :class:`RidgeInverse`: a closed-form ridge-regression linear inverse. ``mode="local"`` fits one
  linear map from a k x k payload neighbourhood (all channels) to the RGB pixel at its centre,
  shared over positions (every method's payload is spatially aligned with the face, so this is the
  strongest linear attacker that fits on a CPU); ``mode="global"`` regresses the whole flattened
  payload (optionally average-pooled) onto the flattened image, in primal or dual form.
- a U-Net recovery decoder (:func:`train_decoder`), trained with L1 and an optional identity loss
  through a differentiable face encoder.

Metrics (:func:`psnr`, :func:`ssim`, :func:`recovery_metrics`): PSNR and SSIM between recovered and
original faces, identity leakage (cosine between an *independent* encoder's embeddings of recovered
and original faces) and attack success (the fraction of recovered faces verified as their true
identity at a fixed false-accept rate, the threshold being set on the originals' impostor scores).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facesynth.core.errors import FacesynthError
from facesynth.core.verification_metrics import threshold_at_far
from facesynth.privacy.payload import Payload, PayloadHeader
from facesynth.privacy.unet import UNet

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# image-quality metrics


def psnr(recovered: torch.Tensor, original: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) batches; ``data_range`` is 2 for images in [-1, 1]."""
    _check_pair(recovered, original)
    mse = (recovered.double() - original.double()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-20))).float()


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    recovered: torch.Tensor,
    original: torch.Tensor,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of (B, C, H, W) batches, averaged over channels and positions.

    Gaussian 11 x 11 window with sigma 1.5, constants C1 = (0.01 L)^2 and C2 = (0.03 L)^2, statistics
    over the valid region only (no padding), as in the reference implementation.
    """
    _check_pair(recovered, original)
    x, y = recovered.double(), original.double()
    channels = x.shape[1]
    if min(x.shape[-2:]) < window_size:
        raise FacesynthError(
            f"ssim: images of {tuple(x.shape[-2:])} are smaller than the {window_size} window"
        )
    g = _gaussian_window(window_size, sigma, x.device, x.dtype)
    kernel_h = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    kernel_v = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_v, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return index.flatten(1).mean(dim=1).float()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise FacesynthError(
            f"metrics need two (B, C, H, W) batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


# --------------------------------------------------------------------------------------------------
# identity metrics


def _normalise(e: torch.Tensor) -> torch.Tensor:
    return F.normalize(e.double(), dim=1)


def identity_scores(
    probe: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Genuine and impostor template scores of probes against per-identity gallery templates.

    The template of identity k is the normalised mean of its gallery embeddings, leaving out the
    probe's own original where the identity has other images (so a probe is never compared with
    the very image it was recovered from unless nothing else exists). Returns genuine scores (N,),
    impostor scores (N * (K-1),) and whether each probe's true identity ranks first (N,).
    """
    probe, gallery = _normalise(probe), _normalise(gallery)
    labels = labels.long().cpu()
    ids = torch.unique(labels)
    sums = torch.stack([gallery[labels == k].sum(0) for k in ids])
    counts = torch.stack([(labels == k).sum() for k in ids]).double()
    genuine, impostor, rank1 = [], [], []
    for i in range(probe.shape[0]):
        own = int((ids == labels[i]).nonzero()[0, 0])
        templates = sums.clone()
        if counts[own] > 1:
            templates[own] = sums[own] - gallery[i]
        templates = F.normalize(templates, dim=1)
        scores = templates @ probe[i]
        genuine.append(scores[own])
        others = torch.cat([scores[:own], scores[own + 1 :]])
        impostor.append(others)
        rank1.append(bool(others.numel() == 0 or scores[own] > others.max()))
    return torch.stack(genuine), torch.cat(impostor), torch.tensor(rank1)


def recovery_metrics(
    recovered: torch.Tensor,
    original: torch.Tensor,
    labels: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    far: float = 1e-3,
) -> dict[str, float]:
    """PSNR, SSIM and, given an independent encoder ``embed``, identity leakage and attack success.

    ``attack_success``: fraction of recovered faces whose score against their true identity's
    template exceeds the threshold at which original-vs-other-identity templates are accepted with
    rate ``far``. ``reference_tar`` is the same rate for the originals themselves, the ceiling a
    perfect recovery reaches; ``far_resolution`` is 1 / number of impostor scores. Because a bland,
    average face can clear a verification threshold for many identities at once,
    ``rank1_identification`` (the true identity's template scores highest) is reported as well.
    """
    out = {
        "psnr": float(psnr(recovered, original).mean()),
        "ssim": float(ssim(recovered, original).mean()),
        "num_images": int(original.shape[0]),
    }
    if embed is None:
        return out
    e_rec, e_orig = embed(recovered), embed(original)
    out["identity_leakage"] = float((_normalise(e_rec) * _normalise(e_orig)).sum(1).mean())
    genuine_orig, impostor_orig, rank1_orig = identity_scores(e_orig, e_orig, labels)
    threshold = threshold_at_far(impostor_orig.cpu().numpy(), far)
    genuine_rec, _, rank1_rec = identity_scores(e_rec, e_orig, labels)
    out.update(
        {
            "attack_success": float((genuine_rec >= threshold).double().mean()),
            "reference_tar": float((genuine_orig >= threshold).double().mean()),
            "rank1_identification": float(rank1_rec.double().mean()),
            "reference_rank1": float(rank1_orig.double().mean()),
            "far": float(far),
            "far_resolution": 1.0 / impostor_orig.numel(),
            "threshold": threshold,
        }
    )
    return out


# --------------------------------------------------------------------------------------------------
# ridge-regression linear inverse


class RidgeInverse:
    """Closed-form ridge regression from payload features (B, C, H, W) to images (B, 3, H', W').

    ``mode="local"``: features at a position are the ``kernel`` x ``kernel`` payload neighbourhood
    (zero-padded) plus a bias; one map shared by all positions predicts that position's RGB pixel.
    Payloads whose side differs from the image's are resized (bilinear) to the image size first.
    Fitting streams batches, accumulating X^T X and X^T Y over ``positions_per_image`` sampled
    positions per image (all positions when None).

    ``mode="global"``: the whole payload, average-pooled by ``pool``, is flattened and regressed
    onto the flattened image (primal solve when features < samples, dual otherwise); training
    features are kept in memory, so use pooling for large payloads.
    """

    def __init__(
        self,
        alpha: float = 1e-3,
        mode: str = "local",
        kernel: int = 3,
        positions_per_image: int | None = 1024,
        pool: int = 1,
        seed: int = 0,
    ):
        if mode not in ("local", "global"):
            raise FacesynthError(f"ridge mode must be 'local' or 'global', got {mode!r}")
        if kernel < 1 or kernel % 2 == 0:
            raise FacesynthError(f"ridge kernel must be an odd positive size, got {kernel}")
        self.alpha, self.mode, self.kernel, self.pool = float(alpha), mode, int(kernel), int(pool)
        self.positions_per_image = positions_per_image
        self.generator = torch.Generator().manual_seed(int(seed))
        self._xtx: torch.Tensor | None = None
        self._xty: torch.Tensor | None = None
        self._train_x: list[torch.Tensor] = []
        self._train_y: list[torch.Tensor] = []
        self.weights: torch.Tensor | None = None
        self._in_shape: tuple[int, ...] | None = None
        self._out_shape: tuple[int, ...] | None = None
        self._dual: tuple[torch.Tensor, torch.Tensor] | None = None
        self._x_mean: torch.Tensor | None = None
        self._y_mean: torch.Tensor | None = None

    # local mode -----------------------------------------------------------------------------------
    def _local_features(
        self, payload: torch.Tensor, size: tuple[int, int], dtype=torch.float64
    ) -> torch.Tensor:
        x = payload.to(dtype)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.kernel == 1:
            cols = x.flatten(2)
        else:
            cols = F.unfold(x, kernel_size=self.kernel, padding=self.kernel // 2)  # (B, C*k*k, H*W)
        ones = torch.ones(cols.shape[0], 1, cols.shape[2], dtype=cols.dtype)
        return torch.cat([cols, ones], dim=1)

    def _check_input(self, payload: torch.Tensor) -> None:
        shape = tuple(payload.shape[1:])
        if self._in_shape is None:
            self._in_shape = shape
        elif shape != self._in_shape:
            raise FacesynthError(
                f"ridge inverse: payload shape {shape} differs from the shape it was fitted on {self._in_shape} "
                "(a payload from another method?)"
            )

    def partial_fit(self, payload: torch.Tensor, images: torch.Tensor) -> RidgeInverse:
        """Add one batch of (payload, image) pairs to the normal equations."""
        payload, images = payload.detach().cpu(), images.detach().cpu()
        if payload.shape[0] != images.shape[0]:
            raise FacesynthError(f"ridge inverse: {payload.shape[0]} payloads but {images.shape[0]} images")
        self._check_input(payload)
        self._out_shape = tuple(images.shape[1:])
        if self.mode == "global":
            self._train_x.append(self._global_features(payload))
            self._train_y.append(images.double().flatten(1))
            return self
        feats = self._local_features(payload, images.shape[-2:])  # (B, F, P)
        target = images.double().flatten(2)  # (B, 3, P)
        if self.positions_per_image is not None and self.positions_per_image < feats.shape[2]:
            idx = torch.stack(
                [
                    torch.randperm(feats.shape[2], generator=self.generator)[: self.positions_per_image]
                    for _ in feats
                ]
            )
            feats = torch.gather(feats, 2, idx[:, None, :].expand(-1, feats.shape[1], -1))
            target = torch.gather(target, 2, idx[:, None, :].expand(-1, target.shape[1], -1))
        x = feats.permute(0, 2, 1).reshape(-1, feats.shape[1])
        y = target.permute(0, 2, 1).reshape(-1, target.shape[1])
        xtx, xty = x.T @ x, x.T @ y
        self._xtx = xtx if self._xtx is None else self._xtx + xtx
        self._xty = xty if self._xty is None else self._xty + xty
        return self

    def _global_features(self, payload: torch.Tensor) -> torch.Tensor:
        x = payload.double()
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, ceil_mode=True)
        return x.flatten(1)

    def finish(self) -> RidgeInverse:
        """Solve the normal equations accumulated by :meth:`partial_fit`."""
        if self.mode == "local":
            if self._xtx is None:
                raise FacesynthError("ridge inverse: no training pairs were given")
            n = self._xtx.shape[0]
            reg = self.alpha * torch.eye(n, dtype=self._xtx.dtype)
            reg[-1, -1] = 0.0  # do not shrink the bias
            self.weights = torch.linalg.solve(self._xtx + reg, self._xty)
            return self
        if not self._train_x:
            raise FacesynthError("ridge inverse: no training pairs were given")
        x, y = torch.cat(self._train_x), torch.cat(self._train_y)
        self._train_x, self._train_y = [], []
        self._x_mean, self._y_mean = x.mean(0), y.mean(0)
        xc, yc = x - self._x_mean, y - self._y_mean
        if xc.shape[1] <= xc.shape[0]:
            self.weights = torch.linalg.solve(
                xc.T @ xc + self.alpha * torch.eye(xc.shape[1], dtype=xc.dtype), xc.T @ yc
            )
        else:
            dual = torch.linalg.solve(xc @ xc.T + self.alpha * torch.eye(xc.shape[0], dtype=xc.dtype), yc)
            self._dual = (xc, dual)
        return self

    def fit(self, payload: torch.Tensor, images: torch.Tensor) -> RidgeInverse:
        """Fit on one in-memory set of pairs."""
        return self.partial_fit(payload, images).finish()

    @torch.no_grad()
    def predict(self, payload: torch.Tensor) -> torch.Tensor:
        """Recovered images (B, 3, H, W), clamped to [-1, 1]."""
        if self._out_shape is None or (self.weights is None and self._dual is None):
            raise FacesynthError("ridge inverse: call fit() before predict()")
        payload = payload.detach().cpu()
        self._check_input(payload)
        if self.mode == "local":
            c, h, w = self._out_shape
            # float32 for speed at prediction time (the solve itself ran in float64)
            feats = self._local_features(payload, (h, w), torch.float32)
            out = torch.einsum("bfp,fc->bcp", feats, self.weights.float()).reshape(-1, c, h, w)
        else:
            x = self._global_features(payload) - self._x_mean
            if self._dual is not None:
                train_x, dual = self._dual
                flat = (x @ train_x.T) @ dual
            else:
                flat = x @ self.weights
            out = (flat + self._y_mean).reshape(-1, *self._out_shape)
        return out.clamp(-1.0, 1.0).float()


# --------------------------------------------------------------------------------------------------
# U-Net recovery decoder


LR_SCHEDULES = ("cosine", "constant")


@dataclass
class DecoderConfig:
    """Training recipe of the U-Net recovery attacker.

    Defaults: Adam at ``lr`` 2e-3 with ``warmup_steps`` (50) linear warm-up then cosine decay to 1 %
    (``lr_schedule``), ``steps`` 1500, widths 32/64/128/256. Chosen with
    ``python -m facesynth.benchmarks.bench_attack_decoder``, which trains the decoder on the RGB row
    (where a perfect recovery exists) and prints the victims' PSNR every 100 steps. Measured at small
    scale (32 x 32 parametric faces, 96 public / 32 victim images, widths 16/32/64, batch 16): with
    this recipe the PSNR reads 19.9 / 25.8 / 30.1 / 31.4 / 32.0 / 32.1 dB at steps 100 / 200 / 500 /
    800 / 1100 / 1500 and gains under 0.1 dB per 100 steps from step 1100 on; the previous recipe
    (constant lr 1e-3) reached 28.7 dB at its 500 steps and was still gaining about 1.5 dB per 100
    steps. The width was not re-measured (the default is unchanged); 112 x 112 faces may need more
    steps than 32 x 32 ones.
    ``identity_weight`` > 0 adds (1 - cosine) between a differentiable encoder's embeddings of
    recovered and original faces.
    """

    block_out_channels: Sequence[int] = (32, 64, 128, 256)
    lr: float = 2e-3
    steps: int = 1500
    batch_size: int = 16
    identity_weight: float = 0.0
    seed: int = 0
    lr_schedule: str = "cosine"
    warmup_steps: int = 50

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise FacesynthError(
                f"decoder lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.steps < 1 or self.lr <= 0:
            raise FacesynthError(f"decoder steps and lr must be positive, got {self.steps} and {self.lr}")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based); short runs warm up over a tenth of their steps."""
        warmup = min(self.warmup_steps, max(1, self.steps // 10))
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.lr_schedule == "constant":
            return self.lr
        span = max(1, self.steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def build_decoder(in_channels: int, config: DecoderConfig) -> UNet:
    """The attacker's U-Net: payload channels -> RGB in [-1, 1] (tanh)."""
    return UNet(
        in_channels=int(in_channels),
        out_channels=3,
        block_out_channels=tuple(config.block_out_channels),
        output_activation="tanh",
    )


def _decoder_input(view: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(view.shape[-2:]) != tuple(size):
        view = F.interpolate(view, size=size, mode="bilinear", align_corners=False)
    return view


def train_decoder(
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    in_channels: int,
    config: DecoderConfig,
    identity_encoder: nn.Module | None = None,
    input_scale: torch.Tensor | None = None,
    progress: bool = True,
    on_step: Callable[[int, UNet], None] | None = None,
) -> UNet:
    """Train the decoder on (attack view, image) pairs for ``config.steps`` optimiser steps.

    ``batches()`` returns a fresh iterable over pairs (called again when one pass is used up).
    ``input_scale`` (C,) divides the view channel-wise (raw DCT coefficients span orders of
    magnitude, so the attacker standardises them; the scale comes from training pairs only).
    ``on_step(step, decoder)`` runs after every optimiser step (measurements; the decoder is in
    training mode and must be left so).
    """
    torch.manual_seed(config.seed)
    decoder = build_decoder(in_channels, config)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=config.lr)
    if identity_encoder is not None:
        identity_encoder.eval().requires_grad_(False)
    decoder.train()
    step = 0
    iterator = iter(batches())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc="attack decoder", leave=False)
    while step < config.steps:
        try:
            view, image = next(iterator)
        except StopIteration:
            iterator = iter(batches())
            continue
        x = _decoder_input(view, image.shape[-2:])
        if input_scale is not None:
            x = x / input_scale.view(1, -1, 1, 1)
        recovered = decoder(x)
        loss = F.l1_loss(recovered, image)
        if identity_encoder is not None and config.identity_weight > 0:
            e_rec, e_img = identity_encoder(recovered), identity_encoder(image)
            loss = loss + config.identity_weight * (1 - F.cosine_similarity(e_rec, e_img, dim=1)).mean()
        for group in optimiser.param_groups:
            group["lr"] = config.lr_at(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if on_step is not None:
            on_step(step, decoder)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    if bar is not None:
        bar.close()
    decoder.eval()
    return decoder


@torch.no_grad()
def decode(
    decoder: UNet,
    view: torch.Tensor,
    size: tuple[int, int] = (112, 112),
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply a trained decoder to attack views."""
    x = _decoder_input(view, size)
    if input_scale is not None:
        x = x / input_scale.view(1, -1, 1, 1)
    return decoder(x)


def channel_scale(views: Iterable[torch.Tensor]) -> torch.Tensor:
    """Per-channel RMS of attack views (a standardisation the attacker learns from its own pairs)."""
    total, count = None, 0
    for view in views:
        s = view.double().pow(2).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        count += view.shape[0] * view.shape[2] * view.shape[3]
    if total is None:
        raise FacesynthError("channel_scale: no views")
    return (total / count).sqrt().clamp_min(1e-6).float()


# --------------------------------------------------------------------------------------------------
# the whole attack on one target


@dataclass
class AttackConfig:
    """Both attackers' settings and the success operating point (see the module docstring)."""

    decoder: DecoderConfig
    ridge: bool = True
    ridge_mode: str = "local"
    ridge_alpha: float = 1.0
    ridge_kernel: int = 3
    ridge_positions: int | None = 512
    ridge_pool: int = 4
    far: float = 1e-3
    batch_size: int = 16
    scale_batches: int = 4
    #: None: the decoder sees a fresh payload of every public face at every step (the strongest
    #: augmentation, one client call per step, k per step for a k-query view). N: N payloads of each
    #: public face are drawn once and the decoder samples among them, N client calls per face in all:
    #: what makes multi-query attacks on a CPU affordable.
    view_draws: int | None = None


ProtectFn = Callable[[torch.Tensor, int], Payload | torch.Tensor]
#: largest pool of precomputed decoder views (``AttackConfig.view_draws``) run_attack will hold
MAX_VIEW_POOL_BYTES = 8 * 2**30


def attack_view(payload: Payload | torch.Tensor) -> torch.Tensor:
    """What the attacker's models read: the payload tensor plus every auxiliary tensor (DuetFace's
    masks), resized bilinearly to the main tensor's side and stacked as extra channels."""
    if isinstance(payload, torch.Tensor):
        return payload
    main = payload.tensor.float()
    parts = [main]
    for name in sorted(payload.extras):
        extra = payload.extras[name].float()
        if extra.dim() != 4:
            raise FacesynthError(
                f"payload extra {name!r} has shape {tuple(extra.shape)}, expected (B, C, H, W)"
            )
        parts.append(F.interpolate(extra, size=main.shape[-2:], mode="bilinear", align_corners=False))
    return torch.cat(parts, dim=1)


@dataclass
class TrainedAttack:
    """Both trained attackers for one target, bound to the payload header they were trained on."""

    decoder: UNet | None
    ridge: RidgeInverse | None
    scale: torch.Tensor
    header: PayloadHeader | None
    size: tuple[int, int]

    def view(self, payload: Payload | torch.Tensor) -> torch.Tensor:
        """The attack view of a payload, refusing payloads from another method, key or shape."""
        if self.header is not None:
            if not isinstance(payload, Payload):
                raise FacesynthError(
                    f"this attack was trained on {self.header.method} payloads; got a bare {type(payload).__name__}"
                )
            payload.check_for(self.header)
        elif isinstance(payload, Payload):
            raise FacesynthError(
                f"this attack was trained on unprotected images; got a {payload.header.method} payload"
            )
        view = attack_view(payload)
        if view.shape[1] != self.scale.numel():
            raise FacesynthError(
                f"payload has {view.shape[1]} attack channels, the attack was trained on {self.scale.numel()}"
            )
        return view

    @torch.no_grad()
    def recover(self, payload: Payload | torch.Tensor) -> dict[str, torch.Tensor]:
        """Recovered images per attacker ("decoder", and "ridge" when fitted)."""
        if self.decoder is None:
            raise FacesynthError("the attack decoder has not been trained yet")
        view = self.view(payload)
        out = {"decoder": decode(self.decoder, view, self.size, self.scale)}
        if self.ridge is not None:
            out["ridge"] = self.ridge.predict(view / self.scale.view(1, -1, 1, 1))
        return out


def landmarks_by_content(
    images: torch.Tensor, landmarks: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch of these (B, 3, H, W) faces -> their (B, 5, 2) landmarks, found by pixel content.

    :func:`run_attack` hands the client batches of faces, not indices; a protect function for a
    method that takes landmarks (DuetFace's ROI) looks each face up here. Faces not in the table get
    NaN points, which the client reads as unknown (the ArcFace template).
    """
    if images.shape[0] != landmarks.shape[0]:
        raise FacesynthError(f"{images.shape[0]} faces but {landmarks.shape[0]} landmark sets")
    table = {
        face.detach().cpu().numpy().tobytes(): points.float()
        for face, points in zip(images, landmarks.detach().cpu(), strict=True)
    }
    unknown = torch.full(tuple(landmarks.shape[1:]), float("nan"))

    def lookup(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([table.get(face.detach().cpu().numpy().tobytes(), unknown) for face in batch])

    return lookup


def _batches(images: torch.Tensor, batch_size: int, order: torch.Tensor | None = None):
    idx = torch.arange(images.shape[0]) if order is None else order
    for start in range(0, len(idx), batch_size):
        yield idx[start : start + batch_size]


def run_attack(
    protect_fn: ProtectFn,
    public_images: torch.Tensor,
    victim_images: torch.Tensor,
    victim_labels: torch.Tensor,
    config: AttackConfig,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    identity_encoder: nn.Module | None = None,
    progress: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor], TrainedAttack]:
    """Train both attackers on public pairs, attack the victims, score every recovery.

    ``protect_fn(images, seed)`` runs the target's client on a batch and returns its
    :class:`~facesynth.privacy.payload.Payload` (or, for the unprotected baseline, the images
    themselves); ``seed`` makes random clients reproducible (a different seed per batch and pass).
    The attacker is bound to the first payload's header and refuses payloads of any other method or
    key. Returns ``(metrics, recoveries, attack)``: metrics per attacker ("decoder", "ridge" and
    "no_information", the public set's mean face for every victim: the floor any attacker must beat),
    the recovered victim images per attacker, and the trained :class:`TrainedAttack`.
    """
    if public_images.shape[0] < 2 or victim_images.shape[0] < 2:
        raise FacesynthError(
            f"attack needs at least 2 public and 2 victim images, got {public_images.shape[0]} and {victim_images.shape[0]}"
        )
    size = (int(public_images.shape[-2]), int(public_images.shape[-1]))
    bs = config.batch_size
    g = torch.Generator().manual_seed(config.decoder.seed)
    first = protect_fn(public_images[:bs], 10_000)
    header = first.header if isinstance(first, Payload) else None
    # attacker-side standardisation, from public pairs only
    scale_views = [attack_view(first)]
    for i, idx in enumerate(_batches(public_images, bs)):
        if 0 < i < config.scale_batches:
            scale_views.append(attack_view(protect_fn(public_images[idx], 10_000 + i)))
    in_channels = int(scale_views[0].shape[1])
    scale = channel_scale(scale_views)
    del scale_views, first
    attack = TrainedAttack(decoder=None, ridge=None, scale=scale, header=header, size=size)

    if config.ridge:
        ridge = RidgeInverse(
            alpha=config.ridge_alpha,
            mode=config.ridge_mode,
            kernel=config.ridge_kernel,
            positions_per_image=config.ridge_positions,
            pool=config.ridge_pool,
            seed=config.decoder.seed,
        )
        for i, idx in enumerate(_batches(public_images, bs)):
            view = attack.view(protect_fn(public_images[idx], 20_000 + i))
            ridge.partial_fit(view / scale.view(1, -1, 1, 1), public_images[idx])
        attack.ridge = ridge.finish()

    epoch = [0]
    pool = None
    if config.view_draws is not None:
        if config.view_draws < 1:
            raise FacesynthError(f"view_draws must be at least 1 (or None), got {config.view_draws}")
        need = config.view_draws * public_images.shape[0] * in_channels * size[0] * size[1] * 4
        if need > MAX_VIEW_POOL_BYTES:
            raise FacesynthError(
                f"view_draws {config.view_draws} x {public_images.shape[0]} public faces x {in_channels} x "
                f"{size[0]} x {size[1]} float32 views need {need / 2**30:.1f} GiB (limit "
                f"{MAX_VIEW_POOL_BYTES / 2**30:.0f} GiB): lower the draws or the public faces, or use fresh draws"
            )
        pool = torch.stack(
            [
                torch.cat(
                    [
                        attack.view(protect_fn(public_images[idx], 1_000_000 * (draw + 1) + j))
                        for j, idx in enumerate(_batches(public_images, bs))
                    ]
                )
                for draw in range(config.view_draws)
            ]
        )  # (draws, N, C, H, W)

    def pairs():
        order = torch.randperm(public_images.shape[0], generator=g)
        epoch[0] += 1
        for j, idx in enumerate(_batches(public_images, bs, order)):
            if len(idx) < 2:
                continue
            if pool is None:
                view = attack.view(protect_fn(public_images[idx], 1_000_000 * epoch[0] + j))
            else:
                view = pool[torch.randint(pool.shape[0], (len(idx),), generator=g), idx]
            yield view, public_images[idx]

    attack.decoder = train_decoder(pairs, in_channels, config.decoder, identity_encoder, scale, progress)

    parts: dict[str, list[torch.Tensor]] = {}
    for i, idx in enumerate(_batches(victim_images, bs)):
        for name, rec in attack.recover(protect_fn(victim_images[idx], 30_000 + i)).items():
            parts.setdefault(name, []).append(rec)
    recoveries = {name: torch.cat(chunks) for name, chunks in parts.items()}
    recoveries["no_information"] = public_images.mean(0, keepdim=True).expand_as(victim_images).contiguous()
    metrics: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, rec in recoveries.items():
            metrics[name] = recovery_metrics(rec, victim_images, victim_labels, embed, far=config.far)
    metrics["view"] = {"channels": in_channels}
    return metrics, recoveries, attack
