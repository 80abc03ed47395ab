"""``facesynth generate --generator arc2face``: public Arc2Face weights under ID3's identity sampling.

Arc2Face (Papantoniou et al., ECCV 2024) is Stable Diffusion 1.5 whose UNet and CLIP text encoder were
fine-tuned so that the prompt "photo of a id person", with a unit ArcFace embedding (zero-padded to the
CLIP width) written over the token embedding of "id", draws that person. This generator feeds it the
conditions of ID3's dataset recipe (:mod:`facesynth.generators.identity_sampling`): Tammes anchors in the
encoder's space and, per image, a unit vector at a cosine drawn uniformly from [cos_lb, cos_ub] to its
anchor. Registered as ``arc2face``, it inherits sharding, determinism and resume from ``generate``.

Weights, in the published layout (a Hub id or a local folder each):

- ``model`` (default ``FoivosPar/Arc2Face``): ``arc2face/`` (UNet2DConditionModel, diffusers format) and
  ``encoder/`` (CLIP text model, transformers format; ``config.json`` + ``pytorch_model.bin`` or
  ``model.safetensors``);
- ``base_model`` (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``): ``vae/``, ``tokenizer/``
  and ``scheduler/`` of Stable Diffusion 1.5.

Sampling: any diffusers scheduler (``scheduler=`` a class name such as ``DPMSolverMultistepScheduler``,
the Arc2Face default, or ``saved`` for the base model's), classifier-free guidance against the empty
prompt (Arc2Face's default 3.0, 25 steps), and optionally ID3's adjusted score (``id_guidance`` > 0)
through a differentiable identity encoder such as ``onnx-torch:arcface.onnx`` (decoded x0_hat, centre
crop, encoder; see :mod:`facesynth.generators.id3_sampling`).

Output: 512x512 images are brought to the 112x112 ArcFace template by ``aligner``: ``none`` (default)
takes the centre ``crop_fraction`` of the image and resizes it, which is *not* a landmark alignment:
0.8 is our estimate from FFHQ's alignment rule (crop side 4x the eye distance, centred 0.1 of the
eye-to-mouth vector below the eyes) against the template (eye distance 0.31 of the side, centre about
0.1 below the eyes), assuming Arc2Face draws FFHQ-like crops (unverified). ``insightface:det_10g.onnx``
or ``dlib`` detect five landmarks and warp with the project's aligner; a face the detector misses falls
back to the centre crop and is counted in the log.

Every row gets ``embedding`` (the condition), ``anchor_cos`` (requested = exact cosine of the condition
to the anchor), ``id_cos`` (the stored 112x112 image re-embedded by ``eval_encoder``, default the
identity encoder; null without one) and no attributes (Arc2Face takes none).

Licences, recorded in ``config()`` so that the dataset card states them: Arc2Face code and weights
MIT (model card), but trained on WebFace42M, whose terms allow non-commercial research only; Stable
Diffusion 1.5 (VAE, tokenizer) CreativeML OpenRAIL-M; insightface / arcface_torch encoders
non-commercial research only. A dataset made this way is for non-commercial research.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.shard_format import IMAGE_SIZE
from facesynth.generators.identity_sampling import (
    IdentityPlan,
    IdentityPlanOptions,
    check_cos_band,
    make_anchors,
    realised_anchor_cos,
)
from facesynth.generators.registry import (
    FaceGenerator,
    GeneratedFace,
    SampleRequest,
    checked_dataset_args,
    register_generator,
)

logger = logging.getLogger(__name__)

#: Bump when a change alters what a given request produces (it is part of ``config()``).
ARC2FACE_GENERATOR_VERSION = 1
DEFAULT_MODEL = "FoivosPar/Arc2Face"
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_PROMPT = "photo of a id person"
UNET_SUBFOLDER, ENCODER_SUBFOLDER = "arc2face", "encoder"
SCHEDULER_ALIASES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LICENSES = {
    "generator": "Arc2Face weights: MIT (FoivosPar/Arc2Face model card); trained on WebFace42M, "
    "non-commercial research only",
    "base_model": "Stable Diffusion 1.5 VAE and tokenizer: CreativeML OpenRAIL-M",
    "encoders": "insightface / arcface_torch recognition models (incl. Arc2Face's arcface.onnx): "
    "non-commercial research only",
}


class Arc2FaceOptions(IdentityPlanOptions):
    """Options of the ``arc2face`` generator (``-o key=value`` or ``--generator-config FILE``)."""

    model: str = Field(default=DEFAULT_MODEL, description="Hub id or folder with arc2face/ and encoder/")
    base_model: str = Field(
        default=DEFAULT_BASE_MODEL, description="Hub id or folder of SD 1.5 (vae/, tokenizer/, scheduler/)"
    )
    prompt: str = DEFAULT_PROMPT
    id_token: str = Field(default="id", description="the prompt word whose token embedding is replaced")
    embedding_dim: int = Field(default=512, ge=2, description="width of the identity (ArcFace) space")
    scheduler: str = Field(
        default="DPMSolverMultistepScheduler",
        description="any diffusers scheduler class, 'saved' (the base model's), ddpm, ddim, dpmsolver++, unipc",
    )
    num_inference_steps: int = Field(default=25, ge=1, le=10_000)
    guidance_scale: float = Field(default=3.0, ge=1.0, description="classifier-free guidance (1 = off)")
    identity_encoder: str | None = Field(
        default=None,
        description="differentiable encoder for the adjusted score (onnx-torch:PATH, torch:PATH)",
    )
    id_guidance: float = Field(default=0.0, ge=0.0, description="kappa of ID3's reversed-likelihood term")
    id_guidance_schedule: Literal["alpha_bar", "constant"] = "alpha_bar"
    eval_encoder: str | None = Field(
        default=None, description="encoder that re-embeds the 112x112 images for id_cos (default: identity)"
    )
    aligner: str = Field(default="none", description="'none' (centre crop), 'dlib' or insightface:DET.onnx")
    crop_fraction: float = Field(
        default=0.8, gt=0.0, le=1.0, description="centre crop kept when not aligning"
    )
    resolution: int | None = Field(default=None, ge=8, description="image side (default: the UNet's)")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(default=8, ge=1, le=4096, description="requests per denoising batch")

    @field_validator("identity_encoder", "eval_encoder", mode="before")
    @classmethod
    def _none_string(cls, value: Any) -> Any:
        return None if value in (None, "none", "None", "") else value


def scheduler_class(name: str) -> type:
    """A diffusers scheduler class from its name or an alias; a clear error otherwise."""
    import diffusers

    cls = getattr(diffusers, SCHEDULER_ALIASES.get(name, name), None)
    if not isinstance(cls, type) or not issubclass(cls, diffusers.SchedulerMixin):
        raise ConfigError(
            f"arc2face generator: scheduler={name!r} is not a diffusers scheduler; use a class name such as "
            f"DPMSolverMultistepScheduler, 'saved', or one of {sorted(SCHEDULER_ALIASES)}"
        )
    return cls


def _load(what: str, source: str, subfolder: str, loader: Any) -> Any:
    try:
        return loader(source, subfolder=subfolder)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"arc2face generator: cannot load the {what} from {source!r} (subfolder {subfolder!r}): {exc}. "
            "Expected the published layout: a Hub id or folder with arc2face/ and encoder/ (model=), and "
            "Stable Diffusion 1.5 with vae/, tokenizer/, scheduler/ (base_model=)"
        ) from None


def load_components(model: str, base_model: str) -> dict[str, Any]:
    """UNet, text encoder, VAE, tokenizer and scheduler config, in float32, through from_pretrained."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    return {
        "unet": _load("UNet", model, UNET_SUBFOLDER, UNet2DConditionModel.from_pretrained),
        "text_encoder": _load("text encoder", model, ENCODER_SUBFOLDER, CLIPTextModel.from_pretrained),
        "vae": _load("VAE", base_model, "vae", AutoencoderKL.from_pretrained),
        "tokenizer": _load("tokenizer", base_model, "tokenizer", CLIPTokenizer.from_pretrained),
        # any scheduler class reads scheduler_config.json; the class to build is chosen later
        "scheduler_config": _load("scheduler config", base_model, "scheduler", DDPMScheduler.load_config),
    }


@contextlib.contextmanager
def identity_in_token_embeddings(
    text_encoder: Any, input_ids: torch.Tensor, id_token_id: int, embeddings: torch.Tensor
) -> Iterator[None]:
    """While active, the text encoder sees ``embeddings`` (zero-padded) as the token embedding of every
    ``id_token_id`` in ``input_ids`` (B, L): Arc2Face's conditioning, without touching the encoder's code."""
    mask = input_ids == id_token_id
    rows = mask.nonzero()[:, 0]

    def replace(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if output.shape[:2] != mask.shape:
            raise FacesynthError(
                f"token embeddings {tuple(output.shape)} do not match ids {tuple(mask.shape)}"
            )
        padded = F.pad(embeddings.to(output), (0, output.shape[-1] - embeddings.shape[-1]))
        output = output.clone()
        output[mask.to(output.device)] = padded[rows.to(output.device)]
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@register_generator("arc2face")
class Arc2FaceGenerator(FaceGenerator):
    """Arc2Face conditioned on Tammes anchors and ID3's cosine band."""

    def __init__(self, num_identities: int, seed: int, device: Any = "cpu", **options: Any):
        num_identities, seed = checked_dataset_args("arc2face", num_identities, seed)
        self.options = opts = Arc2FaceOptions.from_mapping(dict(options), source="arc2face generator options")
        check_cos_band(opts.cos_lb, opts.cos_ub)
        self.num_identities, self.seed = num_identities, seed
        self.device = torch.device(device)
        self.dtype = DTYPES[opts.dtype]
        self.batch_size = opts.batch_size
        self.embedding_dim = opts.embedding_dim

        parts = load_components(opts.model, opts.base_model)
        self.unet, self.text_encoder, self.vae = (
            self._placed(parts[name]) for name in ("unet", "text_encoder", "vae")
        )
        self.tokenizer = parts["tokenizer"]
        saved = parts["scheduler_config"]
        cls = scheduler_class(saved.get("_class_name", "") if opts.scheduler == "saved" else opts.scheduler)
        self.scheduler = cls.from_config(saved)
        if self.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ConfigError("arc2face generator: only epsilon-prediction schedulers are supported")
        self._check_text_width()
        self.input_ids, self.id_token_id = self._prompt_ids()
        self.null_ids = self._tokenize("")
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = opts.resolution or int(self.unet.config.sample_size) * scale
        if self.resolution % scale:
            raise ConfigError(
                f"arc2face generator: resolution {self.resolution} is not a multiple of {scale}"
            )
        self.latent_side = self.resolution // scale

        if opts.id_guidance > 0:
            if opts.identity_encoder is None:
                raise ConfigError(
                    f"arc2face generator: id_guidance={opts.id_guidance} needs identity_encoder= a differentiable "
                    "encoder (e.g. onnx-torch:arcface.onnx or torch:PATH)"
                )
            if float(self.scheduler.init_noise_sigma) != 1.0:
                raise ConfigError(
                    f"arc2face generator: id_guidance needs a scheduler on the DDPM scale (DDPM, DDIM, "
                    f"DPMSolverMultistep, UniPC, PNDM); {type(self.scheduler).__name__} scales its latents"
                )
        self.identity_encoder = self._encoder(opts.identity_encoder, "identity encoder")
        if opts.id_guidance > 0 and not self.identity_encoder.differentiable:
            raise ConfigError(
                f"arc2face generator: identity encoder {opts.identity_encoder!r} is not differentiable; use "
                "onnx-torch:FILE instead of onnx:FILE"
            )
        self.eval_encoder_spec = opts.eval_encoder or opts.identity_encoder
        self.eval_encoder = (
            self._encoder(opts.eval_encoder, "evaluation encoder")
            if opts.eval_encoder
            else self.identity_encoder
        )
        self.aligner = None
        if opts.aligner != "none":
            from facesynth.recognizers.alignment import build_aligner

            try:
                self.aligner = build_aligner(opts.aligner, device=str(self.device))
            except FacesynthError as exc:
                raise ConfigError(f"arc2face generator: aligner {opts.aligner!r}: {exc}") from None
        self.missed_detections = 0

        anchors = make_anchors(
            num_identities,
            self.embedding_dim,
            seed=seed,
            method=opts.anchors,
            subspace_rank=opts.subspace_rank,
            reference=opts.reference or None,
            tammes_steps=opts.tammes_steps,
            device=opts.anchor_device,
            cache_dir=opts.anchor_cache,
        )
        self.plan = IdentityPlan(anchors, opts.cos_lb, opts.cos_ub, None)
        self._anchor_digest = hashlib.sha256(np.ascontiguousarray(anchors).tobytes()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------ setup

    def _placed(self, module: Any) -> Any:
        """Frozen, in eval mode, on the device, in the chosen precision (cast only when not float32)."""
        module = module.to(self.device).eval().requires_grad_(False)
        return module if self.dtype == torch.float32 else module.to(self.dtype)

    def _check_text_width(self) -> None:
        hidden = int(self.text_encoder.config.hidden_size)
        if self.embedding_dim > hidden:
            raise ConfigError(
                f"arc2face generator: embedding_dim={self.embedding_dim} exceeds the text encoder width {hidden}"
            )
        cross = int(self.unet.config.cross_attention_dim)
        if cross != hidden:
            raise ConfigError(
                f"arc2face generator: UNet cross-attention width {cross} != text encoder {hidden}"
            )

    def _tokenize(self, text: str) -> torch.Tensor:
        return self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def _prompt_ids(self) -> tuple[torch.Tensor, int]:
        opts = self.options
        id_ids = self.tokenizer.encode(opts.id_token, add_special_tokens=False)
        if len(id_ids) != 1:
            raise ConfigError(
                f"arc2face generator: id_token={opts.id_token!r} is {len(id_ids)} tokens for this tokenizer, need 1"
            )
        ids = self._tokenize(opts.prompt)
        if not bool((ids == id_ids[0]).any()):
            raise ConfigError(
                f"arc2face generator: the prompt {opts.prompt!r} does not contain {opts.id_token!r}"
            )
        return ids, int(id_ids[0])

    def _encoder(self, spec: str | None, what: str) -> Any:
        if spec is None:
            return None
        from facesynth.recognizers.encoders import load_encoder

        try:
            encoder = load_encoder(spec, device=self.device)
        except FacesynthError as exc:
            raise ConfigError(f"arc2face generator: cannot load the {what} {spec!r}: {exc}") from None
        if int(encoder.embedding_dim) != self.embedding_dim:
            raise ConfigError(
                f"arc2face generator: {what} {spec!r} gives {encoder.embedding_dim}-d embeddings, "
                f"embedding_dim is {self.embedding_dim}"
            )
        return encoder

    def config(self) -> dict[str, Any]:
        skip = ("batch_size", "anchor_device", "anchor_cache")
        return {
            **{k: v for k, v in self.options.to_json_dict().items() if k not in skip},
            "generator_version": ARC2FACE_GENERATOR_VERSION,
            "num_identities": self.num_identities,
            "seed": self.seed,
            "model_fingerprint": self._fingerprint(),
            "anchors_sha256": self._anchor_digest,
            "resolution": self.resolution,
            "scheduler_class": type(self.scheduler).__name__,
            "eval_encoder": self.eval_encoder_spec,
            "licenses": dict(LICENSES),
        }

    def _fingerprint(self) -> str:
        """sha256 of the loaded weights' shapes and a few values: changes when the checkpoint does."""
        if getattr(self, "_weights_digest", None):
            return self._weights_digest
        digest = hashlib.sha256()
        for module in (self.unet, self.text_encoder, self.vae):
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(name.encode() + str(tuple(tensor.shape)).encode())
                digest.update(tensor.reshape(-1)[:8].float().cpu().numpy().tobytes())
        self._weights_digest = digest.hexdigest()[:16]
        return self._weights_digest

    @property
    def anchors(self) -> np.ndarray:
        return self.plan.anchors

    # ------------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def prompt_embeds(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) unit identity vectors -> (B, L, width) text-encoder states of the identity prompt."""
        ids = self.input_ids.expand(embeddings.shape[0], -1)
        with identity_in_token_embeddings(
            self.text_encoder, ids, self.id_token_id, embeddings.to(self.device)
        ):
            return self.text_encoder(ids)[0]

    def _crop(self, images: torch.Tensor) -> torch.Tensor:
        """The centre ``crop_fraction`` square of (B, 3, S, S) images (differentiable)."""
        side = images.shape[-1]
        keep = max(1, round(side * self.options.crop_fraction))
        start = (side - keep) // 2
        return images[..., start : start + keep, start : start + keep]

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def _guidance_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        return self._crop(self._decode(latents))

    def sample(self, embeddings: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] for unit identity vectors (B, D), one seed per image."""
        from diffusers.utils.torch_utils import randn_tensor

        from facesynth.generators.id3_sampling import adjusted_noise, kappa_at

        opts = self.options
        y = embeddings.to(self.device, torch.float32)
        cond = self.prompt_embeds(y).to(self.dtype)
        null = None
        if opts.guidance_scale > 1.0:
            with torch.no_grad():
                null = self.text_encoder(self.null_ids)[0].to(self.dtype).expand_as(cond)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        shape = (len(seeds), int(self.unet.config.in_channels), self.latent_side, self.latent_side)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=torch.float32)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)  # fresh state per batch
        scheduler.set_timesteps(opts.num_inference_steps, device=self.device)
        latents = (latents * scheduler.init_noise_sigma).to(self.dtype)
        alphas_cumprod = scheduler.alphas_cumprod.cpu()
        step_kwargs = {"generator": generators} if "generator" in _step_parameters(scheduler) else {}
        for t in scheduler.timesteps:
            abar = float(alphas_cumprod[int(t)])
            noise, _ = adjusted_noise(
                unet=self.unet,
                sample=scheduler.scale_model_input(latents, t),
                timestep=t,
                alpha_bar=abar,
                cond_tokens=cond,
                null_tokens=null,
                guidance_scale=opts.guidance_scale,
                kappa_t=kappa_at(opts.id_guidance_schedule, opts.id_guidance, abar),
                identity_encoder=self.identity_encoder,
                identity_embeddings=y,
                decode=self._guidance_pixels,
            )
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
        with torch.no_grad():
            return self._decode(latents).float().clamp(-1, 1)

    def _to_aligned_uint8(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) in [-1, 1] -> (B, 112, 112, 3) uint8 on the template (aligner or centre crop)."""
        full = ((images.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        cropped = F.interpolate(
            self._crop(images.cpu() / 2 + 0.5),
            size=(IMAGE_SIZE, IMAGE_SIZE),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out = (cropped.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        if self.aligner is not None:
            for i, image in enumerate(full):
                face = self.aligner.align_largest(np.ascontiguousarray(image))
                if face is None:
                    self.missed_detections += 1
                    logger.warning(
                        "arc2face: no face detected (%d so far): centre crop used", self.missed_detections
                    )
                else:
                    out[i] = face.image
        return out

    def _id_cos(self, images: np.ndarray, labels: Sequence[int]) -> np.ndarray | None:
        if self.eval_encoder is None:
            return None
        return realised_anchor_cos(self.eval_encoder, images, self.plan.anchors[np.asarray(labels)])

    def generate(self, requests: Sequence[SampleRequest]) -> list[GeneratedFace]:
        if not requests:
            return []
        conditions = self.plan.conditions(requests)
        embeddings = torch.from_numpy(np.stack([c.embedding for c in conditions]))
        images = self._to_aligned_uint8(self.sample(embeddings, [r.seed for r in requests]))
        id_cos = self._id_cos(images, [r.label for r in requests])
        return [
            GeneratedFace(
                image=images[i],
                embedding=condition.embedding,
                anchor_cos=condition.anchor_cos,
                id_cos=None if id_cos is None else float(id_cos[i]),
            )
            for i, condition in enumerate(conditions)
        ]


def _step_parameters(scheduler: Any) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
