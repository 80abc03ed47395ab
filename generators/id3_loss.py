"""ID3's ID-preserving training loss and its timestep weight schedules.

    loss = lambda_eps * ||eps - eps_theta(x_t, t, y, s)||^2
         + lambda_rec * w_rec(t) * ||x0_hat - x0||^2
         - lambda_id  * w_id(t)  * <f(x0_hat), y>

``x0_hat = (x_t - sqrt(1 - abar_t) * eps_theta) / sqrt(abar_t)`` is the one-step (Tweedie) estimate and
``f`` a frozen, differentiable identity encoder returning unit vectors (so the inner product is a
cosine). The paper gives the term structure and one coefficient, 0.5 * (1 - sigmoid(t / T)), for the
identity part; everything else is our reconstruction and configurable here.

Weight schedules (``w(t)``, with ``t`` the integer training timestep and ``T`` their number):

``id3_sigmoid``      0.5 * (1 - sigmoid(t / T)): ID3's quoted coefficient (default for the identity term)
``constant``         1
``snr_clipped``      min(SNR(t), 1), SNR = abar / (1 - abar)
``id3_sigmoid_snr``  id3_sigmoid * snr_clipped (default for the reconstruction term: ``||x0_hat - x0||^2``
                     equals ``||eps - eps_theta||^2 / SNR(t)``, which explodes at high noise unless clipped;
                     our choice, the paper's reconstruction weight is unverified)

Only ``prediction_type="epsilon"`` schedulers are supported (x0_hat above assumes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError

Schedule = Literal["id3_sigmoid", "constant", "snr_clipped", "id3_sigmoid_snr"]
SCHEDULES: tuple[str, ...] = ("id3_sigmoid", "constant", "snr_clipped", "id3_sigmoid_snr")


class ID3LossConfig(StageConfig):
    """Weights of the three loss terms (see the module docstring for the schedules)."""

    lambda_eps: float = 1.0
    lambda_rec: float = 1.0
    rec_schedule: Schedule = "id3_sigmoid_snr"
    lambda_id: float = 1.0
    id_schedule: Schedule = "id3_sigmoid"


def timestep_weight(
    schedule: str, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, num_train_timesteps: int
) -> torch.Tensor:
    """Per-sample weight w(t) of a named schedule, float32 (B,)."""
    t = timesteps.float()
    abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr_clipped = torch.clamp(abar / (1.0 - abar), max=1.0)
    sigmoid = 0.5 * (1.0 - torch.sigmoid(t / num_train_timesteps))
    if schedule == "id3_sigmoid":
        return sigmoid
    if schedule == "constant":
        return torch.ones_like(t)
    if schedule == "snr_clipped":
        return snr_clipped
    if schedule == "id3_sigmoid_snr":
        return sigmoid * snr_clipped
    raise FacesynthError(f"loss weight schedule: unknown name {schedule!r}; choose one of {SCHEDULES}")


def predict_x0(
    noisy: torch.Tensor, noise_pred: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """One-step estimate x0_hat from x_t and an epsilon prediction (timesteps: (B,) ints)."""
    abar = alphas_cumprod.to(noisy.device)[timesteps].to(noisy.dtype).view(-1, *([1] * (noisy.ndim - 1)))
    return (noisy - (1.0 - abar).sqrt() * noise_pred) / abar.sqrt()


def embed_for_identity(encoder: Any, images: torch.Tensor) -> torch.Tensor:
    """Unit embeddings of images in [-1, 1], resized (bilinear, differentiable) to the encoder's input size.

    ``input_size`` is read from the encoder: an int, (height, width), or None for "any size"; absent
    means 112x112.

    ``encoder`` is an identity encoder with ``embed(images)`` (facesynth.recognizers.encoders) or any
    ``nn.Module`` mapping images to embeddings; the result is L2-normalised here in either case.
    """
    size = getattr(encoder, "input_size", (112, 112))
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    out = encoder.embed(images) if hasattr(encoder, "embed") else encoder(images)
    return F.normalize(out.float(), dim=-1)


def require_differentiable(encoder: Any, what: str) -> None:
    """Refuse encoders that declare themselves non-differentiable (ONNX, dlib) where gradients are needed."""
    if getattr(encoder, "differentiable", True) is False:
        raise FacesynthError(
            f"{what} needs a differentiable identity encoder (a torch model); "
            f"{type(encoder).__name__} is not differentiable"
        )


def id3_loss(
    config: ID3LossConfig,
    *,
    noise_pred: torch.Tensor,
    noise: torch.Tensor,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    identity_embeddings: torch.Tensor,
    identity_encoder: Any | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    id_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The ID-preserving loss and each of its terms (detached) for logging.

    ``decode`` maps x0_hat to pixels in [-1, 1] (the VAE decoder in latent mode; identity in pixel mode).
    ``id_mask`` (bool (B,)) excludes samples from the identity term, e.g. those whose condition was
    dropped for classifier-free guidance. Returns ``loss`` plus ``eps_mse``, ``rec_mse``, ``id_cos``
    (mean cosine of f(x0_hat) to y), ``rec_term`` and ``id_term`` (weighted contributions).
    """
    num_train_timesteps = int(alphas_cumprod.shape[0])
    eps_mse = F.mse_loss(noise_pred.float(), noise.float(), reduction="none").flatten(1).mean(1)
    loss = config.lambda_eps * eps_mse.mean()
    terms: dict[str, torch.Tensor] = {"eps_mse": eps_mse.mean().detach()}
    need_x0 = config.lambda_rec != 0 or config.lambda_id != 0
    x0_hat = predict_x0(noisy.float(), noise_pred.float(), timesteps, alphas_cumprod) if need_x0 else None
    zero = torch.zeros((), device=noise_pred.device)
    if config.lambda_rec != 0:
        rec = (x0_hat - clean.float()).pow(2).flatten(1).mean(1)
        w_rec = timestep_weight(config.rec_schedule, timesteps, alphas_cumprod, num_train_timesteps)
        rec_term = config.lambda_rec * (w_rec * rec).mean()
        loss = loss + rec_term
        terms.update(rec_mse=rec.mean().detach(), rec_term=rec_term.detach())
    else:
        terms.update(rec_mse=zero, rec_term=zero)
    if config.lambda_id != 0:
        if identity_encoder is None:
            raise FacesynthError("loss: lambda_id != 0 needs an identity encoder (or set lambda_id=0)")
        require_differentiable(identity_encoder, "the identity loss term")
        pixels = decode(x0_hat) if decode is not None else x0_hat
        cos = (embed_for_identity(identity_encoder, pixels) * identity_embeddings.float()).sum(-1)
        w_id = timestep_weight(config.id_schedule, timesteps, alphas_cumprod, num_train_timesteps)
        if id_mask is not None:
            w_id = w_id * id_mask.to(w_id.dtype)
        id_term = -config.lambda_id * (w_id * cos).mean()
        loss = loss + id_term
        terms.update(id_cos=cos.mean().detach(), id_term=id_term.detach())
    else:
        terms.update(id_cos=zero, id_term=zero)
    terms["loss"] = loss
    return terms
