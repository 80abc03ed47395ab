"""ID3Pipeline: identity-conditioned face sampling with ID3's ID-preserving (adjusted-score) sampler.

Components (saved by ``save_pretrained``, restored by ``ID3Pipeline.from_pretrained``):

* ``condition_encoder``: :class:`~facesynth.generators.id3_condition_encoder.ID3ConditionEncoder`,
  stored in ``model_index.json`` as ``["facesynth.generators.id3_condition_encoder",
  "ID3ConditionEncoder"]`` so diffusers imports it by module path (facesynth must be installed);
* ``unet``: ``UNet2DConditionModel``; ``scheduler``: any epsilon-prediction diffusers scheduler
  (DDPM, DDIM, DPM-Solver++ tested; swap with ``Scheduler.from_config(pipe.scheduler.config)``);
* ``vae`` (optional): ``AutoencoderKL`` for latent mode; ``None`` means pixel space.

The frozen identity encoder used for ID-preserving guidance is **not** a saved component (our
decision): it is a face-recognition model with its own weights, licence and format (torch IResNet,
ONNX...), so it is passed at call time (``identity_encoder=``) or attached once with
:meth:`ID3Pipeline.set_identity_encoder`. The folder stays self-contained for plain conditional
sampling (``id_guidance=0``); ``identity_encoder_spec`` in ``model_index.json`` records, for
information, which encoder the model was trained against (free text given by the trainer).

Speed options (issue 17; defaults keep the plain, exact behaviour):

* :meth:`ID3Pipeline.use_scheduler`: ``"ddim"``, ``"ddpm"``, ``"dpmsolver++"`` (DPM-Solver++ 2M, good at
  15-25 steps), ``"unipc"`` (UniPC, 15-25 steps) or ``"saved"``; built from the saved scheduler's
  config so the noise schedule is the trained one. DPM-Solver++ and UniPC have no ``clip_sample``;
  when the saved config clips x0 (diffusers' DDPM/DDIM default), the pipeline gives them DDIM's
  clipping (:func:`~facesynth.generators.id3_sampling.clip_projected_sample`; UniPC then runs without
  its corrector, which would undo it). Without it an under-trained or strongly guided model saturates
  them, guided or not (issue 17).
* :meth:`ID3Pipeline.optimize`: ``channels_last`` memory format (faster convolutions on GPUs),
  ``attention`` ``"sdpa"`` (torch's fused scaled-dot-product attention; diffusers' default on torch 2)
  or ``"math"`` (the plain reference processor), ``compile_unet`` / ``compile_encoder``
  (``torch.compile`` of the UNet and of the identity encoder; off by default: the first call pays the
  compilation, worth it only for long runs on a GPU).
* ``id_guidance_every`` / ``id_guidance_until`` (call arguments): take the identity gradient only every
  k-th step and/or only in the first part of the schedule
  (:func:`~facesynth.generators.id3_sampling.guidance_active`).

Inputs: unit-norm identity embeddings (B, D) and attributes (B, 4) in physical units (yaw, pitch,
roll in degrees, age in years; see :mod:`facesynth.generators.attributes`); ``None`` attributes mean
the neutral values. Bad input raises :class:`~facesynth.core.errors.FacesynthError`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.generators.attributes import attributes_to_array, normalize_attributes
from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
from facesynth.generators.id3_loss import embed_for_identity, require_differentiable
from facesynth.generators.id3_sampling import (
    KAPPA_SCHEDULES,
    adjusted_noise,
    clip_projected_sample,
    guidance_active,
    kappa_at,
)
from facesynth.recognizers.encoders import resolve_encoder_spec

CONDITION_ENCODER_ENTRY = ["facesynth.generators.id3_condition_encoder", "ID3ConditionEncoder"]
#: scheduler names accepted by :meth:`ID3Pipeline.use_scheduler` (and the generator's ``scheduler``)
SCHEDULER_NAMES: tuple[str, ...] = ("saved", "ddpm", "ddim", "dpmsolver++", "unipc")
ATTENTION_NAMES: tuple[str, ...] = ("sdpa", "math")


def scheduler_from_config(name: str, config: Any) -> Any:
    """A diffusers scheduler named ``name`` built from a saved scheduler ``config`` (same noise schedule)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        scheduler = DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2
        )
    elif name == "unipc":
        scheduler = UniPCMultistepScheduler.from_config(config, solver_order=2)
    else:
        raise ConfigError(f"scheduler: unknown name {name!r}; choose one of {SCHEDULER_NAMES}")
    # these solvers have no clip_sample of their own: keep the saved setting in their config, where
    # ID3Pipeline reads it (_projection_clip_range) and save_pretrained writes it
    if "clip_sample" in config:
        scheduler.register_to_config(
            clip_sample=bool(config["clip_sample"]),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
        )
    return scheduler


def scheduler_clips_itself(scheduler: Any) -> bool:
    """Whether the scheduler class takes ``clip_sample`` (DDPM, DDIM) and so applies its config's clipping."""
    return "clip_sample" in inspect.signature(type(scheduler).__init__).parameters


def x0_clip_range(config: Any) -> float | None:
    """The x0 clip range a scheduler config asks for (``clip_sample``), None when it does not or says nothing."""
    if not config.get("clip_sample", False):
        return None
    return float(config.get("clip_sample_range", 1.0))


@dataclass
class ID3PipelineOutput(BaseOutput):
    """Sampled faces and, when an identity encoder was available, their cosine to the condition.

    Args:
        images: list of PIL images, an (B, H, W, 3) float array in [0, 1] (``"np"``) or a (B, 3, H, W)
            tensor in [0, 1] (``"pt"``).
        identity_cos: (B,) cosine <f(image), y> by the guidance encoder, or None without one.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    identity_cos: np.ndarray | None = None


class ID3Pipeline(DiffusionPipeline):
    """Sample faces of given identities and attributes; ``id_guidance`` > 0 adds ID3's identity term."""

    model_cpu_offload_seq = "condition_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: Any,
        condition_encoder: ID3ConditionEncoder,
        vae: AutoencoderKL | None = None,
        identity_encoder_spec: str | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, condition_encoder=condition_encoder, vae=vae)
        if identity_encoder_spec is not None:  # absolute, so the folder works from any directory
            identity_encoder_spec = resolve_encoder_spec(identity_encoder_spec)
        self.register_to_config(identity_encoder_spec=identity_encoder_spec)
        if unet.config.cross_attention_dim != condition_encoder.config.cross_attention_dim:
            raise ConfigError(
                f"ID3Pipeline: unet cross_attention_dim {unet.config.cross_attention_dim} != condition "
                f"encoder cross_attention_dim {condition_encoder.config.cross_attention_dim}"
            )
        if vae is not None and unet.config.in_channels != vae.config.latent_channels:
            raise ConfigError(
                f"ID3Pipeline: unet in_channels {unet.config.in_channels} != vae latent_channels "
                f"{vae.config.latent_channels}"
            )
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ConfigError(
                f"ID3Pipeline: scheduler prediction_type {prediction!r}; only 'epsilon' is supported"
            )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.identity_encoder: Any | None = None
        # the clip_sample of the scheduler the model came with; a scheduler swapped in later whose config
        # has no such flag (DPM-Solver++, UniPC) samples with it too (see id3_sampling.clip_projected_sample)
        self._saved_clip_range = x0_clip_range(scheduler.config)

    # ----------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> ID3Pipeline:
        """Load a saved ID3Pipeline; a local folder of another model is refused with a clear error."""
        path = Path(pretrained_model_name_or_path)
        if path.exists():
            check_pipeline_folder(path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def set_identity_encoder(self, encoder: Any | None) -> None:
        """Attach (or detach with None) the frozen identity encoder used when ``id_guidance`` > 0."""
        if encoder is not None:
            require_differentiable(encoder, "ID-preserving guidance")
        self.identity_encoder = encoder

    def use_scheduler(self, name: str) -> None:
        """Swap the sampler (see :data:`SCHEDULER_NAMES`); ``"saved"`` keeps the current one."""
        if name != "saved":
            self.scheduler = scheduler_from_config(name, self.scheduler.config)

    def optimize(
        self,
        *,
        channels_last: bool = False,
        attention: str = "sdpa",
        compile_unet: bool = False,
        compile_encoder: bool = False,
    ) -> None:
        """Speed options of the module docstring; results equal the plain pipeline's up to float rounding."""
        if attention not in ATTENTION_NAMES:
            raise ConfigError(f"attention: unknown name {attention!r}; choose one of {ATTENTION_NAMES}")
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            self.unet = torch.compile(self.unet)
        if compile_encoder and self.identity_encoder is not None:
            model = getattr(self.identity_encoder, "model", None)
            if isinstance(model, torch.nn.Module):
                self.identity_encoder.model = torch.compile(model)
            else:
                self.identity_encoder = torch.compile(self.identity_encoder)

    @property
    def image_size(self) -> int:
        """Output image size in pixels."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    # ----------------------------------------------------------------------------------- sampling
    def check_inputs(
        self,
        identity_embeddings: Any,
        attributes: Any,
        num_inference_steps: int,
        guidance_scale: float,
        id_guidance: float,
        id_guidance_schedule: str,
        output_type: str,
    ) -> None:
        self.condition_encoder.check_inputs(identity_embeddings, attributes)
        if num_inference_steps < 1:
            raise FacesynthError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not np.isfinite(guidance_scale) or guidance_scale < 1.0:
            raise FacesynthError(
                f"guidance_scale must be >= 1 (1 disables classifier-free guidance), got {guidance_scale}"
            )
        if not np.isfinite(id_guidance) or id_guidance < 0:
            raise FacesynthError(f"id_guidance (kappa) must be >= 0, got {id_guidance}")
        if id_guidance_schedule not in KAPPA_SCHEDULES:
            raise FacesynthError(
                f"id_guidance_schedule: unknown name {id_guidance_schedule!r}; choose one of {KAPPA_SCHEDULES}"
            )
        if output_type not in ("pil", "np", "pt"):
            raise FacesynthError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")

    def _decode(self, sample: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels in [-1, 1] (VAE decode in latent mode), differentiable."""
        if self.vae is None:
            return sample
        return self.vae.decode(sample.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def _projection_clip_range(self) -> float | None:
        """x0 clip range the pipeline applies itself (:func:`clip_projected_sample`), None for none.

        Schedulers with a ``clip_sample`` of their own (DDPM, DDIM) clip as their config says; the others
        (DPM-Solver++, UniPC) get the saved scheduler's ``clip_sample`` (recorded in their config by
        :func:`scheduler_from_config`, else the one of the scheduler this pipeline was built with).
        Only for variance-preserving schedulers (``init_noise_sigma`` 1), where the sample is x_t itself.
        """
        scheduler = self.scheduler
        if scheduler_clips_itself(scheduler) or scheduler.config.get("thresholding", False):
            return None
        if float(scheduler.init_noise_sigma) != 1.0:
            return None
        if "clip_sample" in scheduler.config:
            return x0_clip_range(scheduler.config)
        return self._saved_clip_range

    def _step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "generator" in params:
            kwargs["generator"] = generator
        if "eta" in params:
            kwargs["eta"] = eta
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        identity_embeddings: torch.Tensor | np.ndarray,
        attributes: torch.Tensor | np.ndarray | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        id_guidance: float = 0.0,
        id_guidance_schedule: str = "alpha_bar",
        id_guidance_through_unet: bool = False,
        id_guidance_every: int = 1,
        id_guidance_until: float = 1.0,
        identity_encoder: Any | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ID3PipelineOutput | tuple:
        """Sample one face per (embedding, attributes) row.

        Args:
            identity_embeddings: (B, D) unit-norm identity embeddings y.
            attributes: (B, 4) yaw, pitch, roll (degrees), age (years); None = neutral values.
            num_inference_steps: scheduler steps.
            guidance_scale: classifier-free guidance weight on (y, s) (1 = off; needs a model trained
                with condition dropout to be meaningful).
            id_guidance: kappa of the reversed-likelihood term (0 = plain conditional sampling).
            id_guidance_schedule: "alpha_bar" (kappa_t = kappa * abar_t, default), "constant" or
                "id3_sigmoid" (kappa * 0.5 * (1 - sigmoid(t / T)), the training weight of the identity term).
            id_guidance_through_unet: differentiate x0_hat through the UNet (exact, slower) or not.
            id_guidance_every: take the identity gradient only every k-th step (1 = every step).
            id_guidance_until: take it only in the first fraction of the steps (1.0 = all).
            identity_encoder: frozen differentiable identity encoder (overrides the attached one).
            generator: one CPU generator, or one per sample for batch-independent results.
            latents: initial noise (B, C, S, S) instead of drawing it.
            eta: DDIM eta (ignored by schedulers without it).
            output_type: "pil", "np" or "pt".
        """
        encoder = identity_encoder if identity_encoder is not None else self.identity_encoder
        self.check_inputs(
            identity_embeddings,
            attributes,
            num_inference_steps,
            guidance_scale,
            id_guidance,
            id_guidance_schedule,
            output_type,
        )
        if id_guidance > 0:
            if encoder is None:
                raise FacesynthError(
                    "id_guidance > 0 needs an identity encoder: pass identity_encoder= or call "
                    "pipe.set_identity_encoder(...)"
                )
            require_differentiable(encoder, "ID-preserving guidance")
        guidance_active(0, 1, id_guidance_every, id_guidance_until)  # validates both options
        device = self._execution_device
        dtype = self.unet.dtype
        y = torch.as_tensor(identity_embeddings, dtype=torch.float32).to(device)
        batch = y.shape[0]
        if attributes is None:
            physical, _ = attributes_to_array(None, count=batch)
        else:
            physical = attributes
        s = normalize_attributes(physical, check=False).to(device)
        cond = self.condition_encoder(y, s).to(dtype)
        null = None
        if guidance_scale > 1.0:
            null = self.condition_encoder.null_tokens(batch).to(device=device, dtype=dtype)

        size = int(self.unet.config.sample_size)
        shape = (batch, int(self.unet.config.in_channels), size, size)
        if latents is None:
            # drawn in float32 and cast: a seed gives the same start in every precision (torch's half
            # normal sampler may follow another path and give other numbers)
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)
        elif tuple(latents.shape) != shape:
            raise FacesynthError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        alphas_cumprod = self.scheduler.alphas_cumprod.cpu()
        step_kwargs = self._step_kwargs(generator, eta)

        # alpha_bar per step read once on the CPU: no device sync inside the loop
        step_timesteps = self.scheduler.timesteps.cpu().long().tolist()
        step_alpha_bars = [float(alphas_cumprod[i]) for i in step_timesteps]
        num_train = int(self.scheduler.config.num_train_timesteps)
        num_steps = len(step_timesteps)
        project_range = self._projection_clip_range()
        if hasattr(self.scheduler, "disable_corrector"):
            # UniPC's corrector rebuilds x_t from the previous sample and would undo the projection: with
            # clipping it runs its predictor only (UniP, still multistep); without, as its config says
            off = self.scheduler.config.get("disable_corrector", [])
            self.scheduler.disable_corrector = list(range(num_steps)) if project_range else list(off)
        for i, (t, abar) in enumerate(
            zip(self.progress_bar(self.scheduler.timesteps), step_alpha_bars, strict=True)
        ):
            model_input = self.scheduler.scale_model_input(latents, t)
            kappa_t = 0.0
            if id_guidance > 0 and guidance_active(i, num_steps, id_guidance_every, id_guidance_until):
                kappa_t = kappa_at(id_guidance_schedule, id_guidance, abar, step_timesteps[i], num_train)
            noise, _ = adjusted_noise(
                unet=self.unet,
                sample=model_input,
                timestep=t,
                alpha_bar=abar,
                cond_tokens=cond,
                null_tokens=null,
                guidance_scale=guidance_scale,
                kappa_t=kappa_t,
                identity_encoder=encoder,
                identity_embeddings=y,
                through_unet=id_guidance_through_unet,
                decode=self._decode if self.vae is not None else None,
            )
            if project_range is not None:
                latents = clip_projected_sample(latents, noise, abar, project_range)
            latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample

        images = self._decode(latents).float().clamp(-1, 1)
        identity_cos = None
        if encoder is not None:
            identity_cos = (embed_for_identity(encoder, images) * y).sum(-1).cpu().numpy()
        images = (images / 2 + 0.5).clamp(0, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out: Any = images.cpu()
        else:
            array = images.cpu().permute(0, 2, 3, 1).numpy()
            out = self.numpy_to_pil(array) if output_type == "pil" else array
        if not return_dict:
            return (out, identity_cos)
        return ID3PipelineOutput(images=out, identity_cos=identity_cos)


def check_pipeline_folder(path: str | Path) -> dict[str, Any]:
    """Read ``model_index.json`` of a folder and refuse anything that is not an ID3Pipeline."""
    path = Path(path)
    index = path / "model_index.json"
    if not path.is_dir() or not index.is_file():
        raise ConfigError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{index}: unreadable model_index.json ({exc})") from None
    name = data.get("_class_name")
    if name != "ID3Pipeline":
        raise ConfigError(f"{path}: this pipeline folder holds a {name!r}, not an ID3Pipeline")
    entry = data.get("condition_encoder")
    if list(entry or []) != CONDITION_ENCODER_ENTRY:
        raise ConfigError(
            f"{index}: condition_encoder entry is {entry!r}, expected {CONDITION_ENCODER_ENTRY} "
            "(folder written by another version or edited)"
        )
    for part in ("unet", "scheduler", "condition_encoder"):
        if not (path / part).is_dir():
            raise ConfigError(f"{path}: component folder {part!r} is missing")
    return data
