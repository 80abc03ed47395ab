"""``facesynth generate --generator id3``: ID3 synthetic datasets from a trained ID3Pipeline.

The generator follows ID3's dataset recipe (arXiv 2409.17576, Algorithm 3 and Appendix C): N identity
anchors spread by a Tammes solver, per image a condition embedding at a uniformly drawn cosine to
its anchor, attributes resampled from a training set, then ID-preserving sampling with the pipeline.
Registered as ``id3``, it inherits sharding, determinism and resume from ``facesynth generate``.

Every row gets ``embedding`` (the condition y actually used), ``anchor_cos`` (the requested cosine,
which is also the exact cosine of ``embedding`` to the anchor), ``attributes`` (natural units: degrees
and years; null when the model has no attribute input) and ``id_cos`` (cosine between the anchor and
the *stored* 112x112 image re-embedded by the evaluation encoder; null without an encoder).

Determinism: anchors depend on (seed, N, anchor options) only and are identical on every process;
each image uses a numpy generator and a torch CPU generator seeded from its request seed, so the
result does not depend on batching or the number of processes (up to float reduction order of
batched convolutions, i.e. at most a rare 1-level difference in 8-bit pixels).

Defaults, and which are unverified (ID3's code was never released):

=========================  ===============  =====================================================
option                     default          status
=========================  ===============  =====================================================
cos_lb, cos_ub             0.7, 0.9         one of the two bands the paper studies
anchors                    tammes           paper (solver and its settings are ours)
attributes                 empirical        paper (rows resampled from ``reference`` shards; ours)
num_inference_steps        50               unverified
scheduler                  saved            unverified (DDPM vs DDIM unknown)
guidance_scale             1.0 (no CFG)     unverified (whether ID3 uses CFG is unknown)
id_guidance (kappa)        1.0              unverified (tune on a pilot run)
id_guidance_schedule       alpha_bar        ours; ``id3_sigmoid`` ties kappa_t to the training weight
id_guidance_every / until  1 / 1.0          ours (identity gradient on every step; fewer is faster)
scheduler (speed)          saved            ``dpmsolver++`` / ``unipc`` at 15-25 steps: see
                                            ``bench_id3_sampling --compare`` for the quality change
channels_last, attention,  off, sdpa, off   speed only (``compile`` pays a compilation first)
compile
=========================  ===============  =====================================================

With ``attributes=empirical`` the log says which attributes of the reference shards were measured
(``AttributeSampler.describe``) and ``config()`` records the measured share of each
(``attributes_measured``), so a dataset conditioned on neutral stand-ins says so.

Ablations are plain options: ``anchors=random`` (ID3-random), ``attributes=none`` (with a model
trained without attributes: ID3-w/o-attribute), ``id_guidance=0`` (ID3-w/o-reversed),
``cos_lb=0.5 cos_ub=0.7`` (ID3-[0.5, 0.7]).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.shard_format import IMAGE_SIZE
from facesynth.generators.identity_sampling import (
    IdentityPlan,
    IdentityPlanOptions,
    check_cos_band,
    load_attribute_sampler,
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
from facesynth.recognizers.encoders import resize_faces

logger = logging.getLogger(__name__)

#: Bump when a change alters what a given request produces (it is part of ``config()``).
ID3_GENERATOR_VERSION = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ID3Options(IdentityPlanOptions):
    """Options of the ``id3`` generator (``-o key=value`` or ``--generator-config FILE``)."""

    pipeline: str = Field(description="folder of a saved ID3Pipeline (save_pretrained)")
    identity_encoder: str | None = Field(
        default="auto",
        description="identity encoder for ID-preserving guidance (torch:PATH, onnx:PATH, ...); 'auto' = the "
        "pipeline's recorded identity_encoder_spec when it has one; 'none' = no encoder",
    )
    eval_encoder: str | None = Field(
        default=None, description="encoder that re-embeds images for id_cos (default: the identity encoder)"
    )
    num_inference_steps: int = Field(default=50, ge=1, le=10_000)
    guidance_scale: float = Field(default=1.0, ge=1.0, description="classifier-free guidance (1 = off)")
    id_guidance: float = Field(default=1.0, ge=0.0, description="kappa of the reversed-likelihood term")
    id_guidance_schedule: Literal["alpha_bar", "constant", "id3_sigmoid"] = "alpha_bar"
    id_guidance_through_unet: bool = False
    id_guidance_every: int = Field(default=1, ge=1, description="identity gradient every k-th step only")
    id_guidance_until: float = Field(
        default=1.0, ge=0.0, le=1.0, description="identity gradient only in this first fraction of the steps"
    )
    scheduler: Literal["saved", "ddpm", "ddim", "dpmsolver++", "unipc"] = Field(
        default="saved", description="sampler; dpmsolver++ / unipc need only 15-25 steps"
    )
    channels_last: bool = Field(default=False, description="channels-last UNet (faster on GPUs)")
    attention: Literal["sdpa", "math"] = "sdpa"
    compile: bool = Field(default=False, description="torch.compile the UNet and the identity encoder")
    eta: float = Field(default=0.0, ge=0.0, le=1.0, description="DDIM eta")
    attributes: str = Field(default="empirical", description="'empirical', 'none' or a .npy/.csv/shard path")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(default=16, ge=1, le=4096, description="requests per pipeline call")

    @field_validator("identity_encoder", "eval_encoder", mode="before")
    @classmethod
    def _none_string(cls, value: Any) -> Any:
        return None if value in (None, "none", "None", "") else value


def _pipeline_fingerprint(folder: Path) -> str:
    """sha256 over the folder's JSON configs and the names and sizes of its weight files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        digest.update(relative.encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


def _load_encoder(spec: str, device: Any, what: str) -> Any:
    from facesynth.recognizers.encoders import load_encoder

    try:
        return load_encoder(spec, device=device)
    except FacesynthError as exc:
        raise ConfigError(f"id3 generator: cannot load the {what} {spec!r}: {exc}") from None


@register_generator("id3")
class ID3Generator(FaceGenerator):
    """ID3 dataset generation: Tammes anchors, cosine-band conditions, empirical attributes."""

    def __init__(self, num_identities: int, seed: int, device: Any = "cpu", **options: Any):
        from facesynth.generators.id3_pipeline import ID3Pipeline

        num_identities, seed = checked_dataset_args("id3", num_identities, seed)
        self.options = ID3Options.from_mapping(dict(options), source="id3 generator options")
        opts = self.options
        check_cos_band(opts.cos_lb, opts.cos_ub)
        self.num_identities, self.seed = int(num_identities), int(seed)
        self.device = torch.device(device)
        self.batch_size = opts.batch_size

        folder = Path(opts.pipeline)
        # float32 is diffusers' default; other dtypes go through from_pretrained so that modules
        # diffusers keeps in float32 stay there
        dtype_kwargs = {} if opts.dtype == "float32" else {"torch_dtype": DTYPES[opts.dtype]}
        self.pipe = ID3Pipeline.from_pretrained(folder, **dtype_kwargs)
        self.pipe.use_scheduler(opts.scheduler)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._fingerprint = _pipeline_fingerprint(folder)
        encoder_config = self.pipe.condition_encoder.config
        self.embedding_dim = int(encoder_config.embedding_dim)
        self.uses_attributes = int(encoder_config.num_attributes) > 0

        spec = opts.identity_encoder
        what = "identity encoder"
        if spec == "auto":
            spec = self.pipe.config.get("identity_encoder_spec")
            what = "identity encoder recorded in the pipeline (override with -o identity_encoder=SPEC|none)"
        self.identity_encoder = _load_encoder(spec, self.device, what) if spec else None
        self.identity_encoder_spec = spec
        if opts.id_guidance > 0 and self.identity_encoder is None:
            raise ConfigError(
                f"id3 generator: id_guidance={opts.id_guidance} needs an identity encoder and the pipeline "
                "records none; pass -o identity_encoder=torch:PATH (or -o id_guidance=0 for the "
                "w/o-reversed ablation)"
            )
        if self.identity_encoder is not None:
            self._check_encoder_width(self.identity_encoder, spec)
        self.pipe.set_identity_encoder(self.identity_encoder if opts.id_guidance > 0 else None)
        self.pipe.optimize(
            channels_last=opts.channels_last,
            attention=opts.attention,
            compile_unet=opts.compile,
            compile_encoder=opts.compile,
        )
        self.eval_encoder_spec = opts.eval_encoder or spec
        if opts.eval_encoder:
            self.eval_encoder = _load_encoder(opts.eval_encoder, self.device, "evaluation encoder")
            self._check_encoder_width(self.eval_encoder, opts.eval_encoder)
        else:
            self.eval_encoder = self.identity_encoder

        attributes = load_attribute_sampler(opts.attributes, opts.reference or None)
        if attributes is not None and self.uses_attributes:
            logger.info("%s", attributes.describe())
        if attributes is not None and not self.uses_attributes:
            logger.warning("the ID3 model takes no attributes: attributes=%r is ignored", opts.attributes)
            attributes = None
        elif attributes is None and self.uses_attributes:
            logger.warning("attributes=none with a model that takes attributes: neutral values are used")
        anchors = make_anchors(
            self.num_identities,
            self.embedding_dim,
            seed=self.seed,
            method=opts.anchors,
            subspace_rank=opts.subspace_rank,
            reference=opts.reference or None,
            tammes_steps=opts.tammes_steps,
            device=opts.anchor_device,
            cache_dir=opts.anchor_cache,
        )
        self.plan = IdentityPlan(anchors, opts.cos_lb, opts.cos_ub, attributes)
        self._anchor_digest = hashlib.sha256(np.ascontiguousarray(anchors).tobytes()).hexdigest()[:16]

    def _check_encoder_width(self, encoder: Any, spec: str) -> None:
        width = getattr(encoder, "embedding_dim", None)
        if width is not None and int(width) != self.embedding_dim:
            raise ConfigError(
                f"id3 generator: encoder {spec!r} gives {width}-d embeddings but the ID3 model is "
                f"conditioned on {self.embedding_dim}-d ones"
            )

    @property
    def anchors(self) -> np.ndarray:
        """The (N, D) identity anchors of this dataset."""
        return self.plan.anchors

    def config(self) -> dict[str, Any]:
        return {
            "generator_version": ID3_GENERATOR_VERSION,
            "num_identities": self.num_identities,
            "seed": self.seed,
            "pipeline_fingerprint": self._fingerprint,
            "embedding_dim": self.embedding_dim,
            "identity_encoder": self.identity_encoder_spec,
            "eval_encoder": self.eval_encoder_spec,
            "anchors_sha256": self._anchor_digest,
            "attribute_source": None if self.plan.attributes is None else self.plan.attributes.source,
            "attributes_measured": None if self.plan.attributes is None else self.plan.attributes.measured,
            **{
                k: v
                for k, v in self.options.to_json_dict().items()
                if k not in ("batch_size", "anchor_device", "anchor_cache")
            },
        }

    def generate(self, requests: Sequence[SampleRequest]) -> list[GeneratedFace]:
        if not requests:
            return []
        opts = self.options
        conditions = self.plan.conditions(requests)
        embeddings = np.stack([c.embedding for c in conditions])
        if self.uses_attributes and self.plan.attributes is not None:
            physical = np.array(
                [[c.attributes[k] for k in ("yaw", "pitch", "roll", "age")] for c in conditions]
            )
        else:
            physical = None
        generators = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]
        output = self.pipe(
            identity_embeddings=torch.from_numpy(embeddings),
            attributes=None if physical is None else torch.from_numpy(physical).float(),
            num_inference_steps=opts.num_inference_steps,
            guidance_scale=opts.guidance_scale,
            id_guidance=opts.id_guidance,
            id_guidance_schedule=opts.id_guidance_schedule,
            id_guidance_through_unet=opts.id_guidance_through_unet,
            id_guidance_every=opts.id_guidance_every,
            id_guidance_until=opts.id_guidance_until,
            identity_encoder=self.pipe.identity_encoder if opts.id_guidance > 0 else None,
            generator=generators,
            eta=opts.eta,
            output_type="pt",
        )
        images = self._to_uint8(output.images)
        id_cos = self._id_cos(images, [r.label for r in requests])
        faces = []
        for i, condition in enumerate(conditions):
            attributes = condition.attributes if physical is not None else None
            if attributes is None and self.uses_attributes:
                from facesynth.generators.attributes import NEUTRAL_ATTRIBUTES

                attributes = dict(NEUTRAL_ATTRIBUTES)  # what the pipeline used
            faces.append(
                GeneratedFace(
                    image=images[i],
                    embedding=condition.embedding,
                    attributes=attributes,
                    anchor_cos=condition.anchor_cos,
                    id_cos=None if id_cos is None else float(id_cos[i]),
                )
            )
        return faces

    @staticmethod
    def _to_uint8(images: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) in [0, 1] -> (B, 112, 112, 3) uint8, antialiased resize when H, W != 112."""
        images = resize_faces(images.float(), (IMAGE_SIZE, IMAGE_SIZE))
        pixels = (images.clamp(0, 1) * 255.0).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()

    def _id_cos(self, images: np.ndarray, labels: Sequence[int]) -> np.ndarray | None:
        """Cosine between each stored image's re-embedding and its identity anchor."""
        if self.eval_encoder is None:
            return None
        return realised_anchor_cos(self.eval_encoder, images, self.plan.anchors[np.asarray(labels)])
