"""ID-preserving sampling: the adjusted score of ID3 as an epsilon substitution any scheduler can take.

ID3 samples along an *adjusted* score, the model's conditional score plus a "reversed likelihood"
term, the gradient of the identity log-likelihood log p(y | x_t). With a von Mises-Fisher identity
likelihood that term is ``kappa_t * grad_{x_t} <f(x0_hat(x_t)), y>`` (classifier guidance with the
face-recognition model as classifier). Since ``score = -eps / sqrt(1 - abar_t)``, the adjusted score is
the same as stepping the scheduler with

    eps_tilde = eps - sqrt(1 - abar_t) * kappa_t * grad_{x_t} <f(x0_hat(x_t)), y>

so DDPM, DDIM and DPM-Solver++ all work unchanged. Options (all unverified in the paper, our choices):

* ``through_unet``: differentiate x0_hat through the UNet (exact gradient, about 2-3x the cost of a
  step) or treat eps as constant (``False``, default: only the encoder is back-propagated, and
  ``grad_{x_t} = grad_{x0_hat} / sqrt(abar_t)``).
* kappa schedule: ``alpha_bar`` (default) uses ``kappa_t = kappa * abar_t``, which makes the change of
  x0_hat per step ``kappa * (1 - abar_t) * grad_{x0_hat}`` (bounded; vanishes as the image gets clean),
  ``constant`` uses ``kappa_t = kappa`` (the raw classifier-guidance weight; large at high noise).

``kappa = 0`` is plain conditional sampling (no encoder call at all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from facesynth.core.errors import FacesynthError
from facesynth.generators.id3_loss import embed_for_identity

KAPPA_SCHEDULES: tuple[str, ...] = ("alpha_bar", "constant")


def kappa_at(schedule: str, kappa: float, alpha_bar: float) -> float:
    """The guidance weight kappa_t at a step with cumulative alpha ``alpha_bar``."""
    if schedule == "alpha_bar":
        return kappa * alpha_bar
    if schedule == "constant":
        return kappa
    raise FacesynthError(f"id_guidance_schedule: unknown name {schedule!r}; choose one of {KAPPA_SCHEDULES}")


def conditional_noise(
    unet: Any,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    cond_tokens: torch.Tensor,
    null_tokens: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """eps_theta(x_t, t, c), with classifier-free guidance when ``null_tokens`` is given."""
    if null_tokens is None:
        return unet(sample, timestep, encoder_hidden_states=cond_tokens).sample
    both = unet(
        torch.cat([sample, sample]), timestep, encoder_hidden_states=torch.cat([null_tokens, cond_tokens])
    ).sample
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def adjusted_noise(
    *,
    unet: Any,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    alpha_bar: float,
    cond_tokens: torch.Tensor,
    null_tokens: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    kappa_t: float = 0.0,
    identity_encoder: Any | None = None,
    identity_embeddings: torch.Tensor | None = None,
    through_unet: bool = False,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step's eps_tilde and the per-sample objective <f(x0_hat), y> (None when kappa_t == 0)."""
    if kappa_t == 0:
        with torch.no_grad():
            return conditional_noise(unet, sample, timestep, cond_tokens, null_tokens, guidance_scale), None
    if identity_encoder is None or identity_embeddings is None:
        raise FacesynthError("id_guidance > 0 needs an identity encoder and the identity embeddings")
    sigma = (1.0 - alpha_bar) ** 0.5
    with torch.enable_grad():
        x = sample.detach().requires_grad_(True)
        if through_unet:
            eps = conditional_noise(unet, x, timestep, cond_tokens, null_tokens, guidance_scale)
        else:
            with torch.no_grad():
                eps = conditional_noise(unet, sample, timestep, cond_tokens, null_tokens, guidance_scale)
        x0_hat = (x - sigma * eps) / alpha_bar**0.5
        pixels = decode(x0_hat) if decode is not None else x0_hat
        cos = (embed_for_identity(identity_encoder, pixels.float()) * identity_embeddings.float()).sum(-1)
        (grad,) = torch.autograd.grad(cos.sum(), x)
    eps_tilde = eps.detach() - sigma * kappa_t * grad.to(eps.dtype)
    return eps_tilde, cos.detach()
