"""ID-preserving sampling: the adjusted score of ID3 as an epsilon substitution any scheduler can take.

ID3 samples along an *adjusted* score, the model's conditional score plus a "reversed likelihood"
term, the gradient of the identity log-likelihood log p(y | x_t). With a von Mises-Fisher identity
likelihood that term is ``kappa_t * grad_{x_t} <f(x0_hat(x_t)), y>`` (classifier guidance with the
face-recognition model as classifier). Since ``score = -eps / sqrt(1 - abar_t)``, the adjusted score is
the same as stepping the scheduler with

    eps_tilde = eps - sqrt(1 - abar_t) * kappa_t * grad_{x_t} <f(x0_hat(x_t)), y>

so DDPM, DDIM, DPM-Solver++ and UniPC all take it unchanged (they all convert an epsilon output to x0
with the same sqrt(abar_t), so the guidance term is scheduler-agnostic). What differs is the clipping of
x0: see :func:`clip_projected_sample`. Options (all unverified in the paper, our choices):

* ``through_unet``: differentiate x0_hat through the UNet (exact gradient, about 2-3x the cost of a
  step) or treat eps as constant (``False``, default: only the encoder is back-propagated, and
  ``grad_{x_t} = grad_{x0_hat} / sqrt(abar_t)``).
* kappa schedule: ``alpha_bar`` (default) uses ``kappa_t = kappa * abar_t``, which makes the change of
  x0_hat per step ``kappa * (1 - abar_t) * grad_{x0_hat}`` (bounded; vanishes as the image gets clean),
  ``constant`` uses ``kappa_t = kappa`` (the raw classifier-guidance weight; large at high noise),
  ``id3_sigmoid`` uses ``kappa_t = kappa * 0.5 * (1 - sigmoid(t / T))``, the very coefficient of the
  identity term in training (:func:`facesynth.generators.id3_loss.timestep_weight`, ``id3_sigmoid``):
  ID3's theorem pairs the sampler's reversed-likelihood weight with that training weight, so with
  ``kappa = lambda_id`` the sampler follows the adjusted score the loss was trained for. It falls from
  0.25 at t = 0 to 0.13 at t = T (nearly flat, unlike ``alpha_bar``).
* where the identity gradient is taken (it costs an encoder forward + backward per step, 2-3x a plain
  step): ``every`` k-th step only, and/or only during the first ``until`` fraction of the steps (the
  high-noise part, where the identity is decided); see :func:`guidance_active`. Skipped steps are plain
  conditional steps; kappa is not rescaled on the others.

``kappa = 0`` is plain conditional sampling (no encoder call at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from facesynth.core.errors import FacesynthError
from facesynth.generators.id3_loss import embed_for_identity

KAPPA_SCHEDULES: tuple[str, ...] = ("alpha_bar", "constant", "id3_sigmoid")


def kappa_at(
    schedule: str,
    kappa: float,
    alpha_bar: float,
    timestep: float | None = None,
    num_train_timesteps: int | None = None,
) -> float:
    """The guidance weight kappa_t at a step (``id3_sigmoid`` needs the timestep t and T)."""
    if schedule == "alpha_bar":
        return kappa * alpha_bar
    if schedule == "constant":
        return kappa
    if schedule == "id3_sigmoid":
        if timestep is None or not num_train_timesteps:
            raise FacesynthError(
                "id_guidance_schedule 'id3_sigmoid' needs the timestep and num_train_timesteps"
            )
        return kappa * 0.5 * (1.0 - 1.0 / (1.0 + math.exp(-float(timestep) / num_train_timesteps)))
    raise FacesynthError(f"id_guidance_schedule: unknown name {schedule!r}; choose one of {KAPPA_SCHEDULES}")


def guidance_active(step_index: int, num_steps: int, every: int = 1, until: float = 1.0) -> bool:
    """Whether step ``step_index`` (0 = the noisiest) takes the identity gradient.

    ``every``: only every k-th step (0, k, 2k, ...); ``until``: only steps with
    ``step_index < until * num_steps`` (1.0 = all steps, 0.5 = the first, high-noise half).
    """
    if every < 1:
        raise FacesynthError(f"id_guidance_every must be >= 1, got {every}")
    if not 0.0 <= until <= 1.0:
        raise FacesynthError(f"id_guidance_until must be in [0, 1], got {until}")
    return step_index % every == 0 and step_index < until * num_steps


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


def clip_projected_sample(
    sample: torch.Tensor, eps: torch.Tensor, alpha_bar: float, clip_range: float
) -> torch.Tensor:
    """x_t moved so that (x_t, eps) predicts the clipped x0: ``x_t' = sqrt(abar) clip(x0) + sqrt(1 - abar) eps``.

    Why: DDIM's ``clip_sample`` clips x0 but keeps the model's eps for the direction to x_(t-1); that
    step is exactly a plain DDIM step from x_t'. DPM-Solver++ and UniPC have no ``clip_sample``: stepping
    them from x_t' gives them DDIM's clipping (their first-order step *is* this DDIM step). Without it an
    under-trained or strongly guided model, whose x0 predictions at high noise lie far outside the data
    range (|x0| up to 270 on the cpu20 model at t = 940), drives them to saturated images, guided or not.
    Rewriting eps instead (GLIDE's "clipped model output") saturates DDIM too on that model, so the
    sample, not the noise, is what is changed. ``x_t' = x_t - sqrt(abar) (x0 - clip(x0))``: exactly x_t
    where nothing is clipped.
    """
    alpha, sigma = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    x0 = (sample - sigma * eps) / alpha
    return sample - alpha * (x0 - x0.clamp(-clip_range, clip_range))
