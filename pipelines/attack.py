"""``facesynth attack``: the white-box recovery attack on a trained privacy method (or on plain RGB).

Wiring only: load the attacker's public faces and the victims' faces from shards (identity-disjoint:
the attacker never sees a victim identity), load the target (a trained privacy-method folder, or
``rgb`` for the unprotected baseline whose "payload" is the image itself) and an independent
identity encoder, run :func:`facesynth.privacy.attacks.run_attack`, and write ``attack.json``,
``attack.md`` and ``samples.png`` (originals, then each attacker's recoveries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError
from facesynth.recognizers.encoders import resize_faces, resize_landmarks

logger = logging.getLogger(__name__)

RGB_TARGET = "rgb"


class AttackStageConfig(StageConfig):
    """Settings of ``facesynth attack``."""

    target: str = Field(description="trained privacy-method folder, or 'rgb' for the unprotected baseline")
    public: list[str] = Field(min_length=1, description="the attacker's shard folders (public faces)")
    victims: list[str] = Field(
        default_factory=list, description="victims' shard folders; empty: split public"
    )
    public_fraction: float = Field(
        default=0.5, gt=0, lt=1, description="identity share for the attacker when victims is empty"
    )
    output_dir: str
    encoder: str | None = Field(default=None, description="independent identity encoder (torch:, onnx:, ...)")
    max_public_images: int = Field(default=2000, ge=2)
    max_victim_images: int = Field(default=500, ge=2)
    decoder_steps: int = Field(default=1500, ge=1, description="decoder steps (DecoderConfig's default)")
    decoder_widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    decoder_lr: float = Field(default=2e-3, gt=0)
    decoder_lr_schedule: Literal["cosine", "constant"] = Field(default="cosine")
    multi_query_ks: list[int] = Field(
        default_factory=list,
        description="randomised targets: also attack with k payloads of each face, for each k (e.g. 1 4 16)",
    )
    view_draws: int | None = Field(
        default=None,
        ge=1,
        description="payloads drawn once per public face for the decoder (default: a fresh one every step)",
    )
    identity_weight: float = Field(
        default=0.0, ge=0, description="identity loss weight (needs a torch: encoder)"
    )
    batch_size: int = Field(default=16, ge=2)
    ridge: bool = True
    ridge_mode: str = Field(default="local", pattern="^(local|global)$")
    ridge_alpha: float = Field(default=1.0, gt=0)
    ridge_kernel: int = Field(default=3, ge=1)
    ridge_positions: int = Field(default=512, ge=1)
    ridge_pool: int = Field(default=4, ge=1)
    far: float = Field(default=1e-3, gt=0, lt=1)
    seed: int = 0
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda, cuda:K")
    progress: bool = True
    allow_plain_parquet: bool = Field(
        default=False,
        description="read dataset folders that have no facesynth.json (plain Parquet), unchecked",
    )


@dataclass
class FaceSet:
    """Faces in [-1, 1], their identities, and their (N, 5, 2) landmarks (NaN where unknown) or None."""

    images: torch.Tensor
    identities: list[str]
    landmarks: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> FaceSet:
        return FaceSet(
            self.images[index],
            [self.identities[int(i)] for i in index],
            None if self.landmarks is None else self.landmarks[index],
        )

    def subsample(self, limit: int | None, seed: int) -> FaceSet:
        """At most ``limit`` faces, a seeded random choice kept in dataset order."""
        if limit is None or len(self.identities) <= limit:
            return self
        keep = torch.randperm(len(self.identities), generator=torch.Generator().manual_seed(seed))[:limit]
        return self.select(torch.sort(keep).values)

    def resized(self, size: Sequence[int]) -> FaceSet:
        """The faces at ``size`` as a client at that input size protects them, landmarks moved with them."""
        if tuple(self.images.shape[-2:]) == tuple(size):
            return self
        landmarks = self.landmarks
        if landmarks is not None:
            landmarks = resize_landmarks(landmarks, tuple(self.images.shape[-2:]), size)
        return FaceSet(resize_faces(self.images, size), self.identities, landmarks)


def load_faces(
    sources: Sequence[str], max_images: int | None = None, seed: int = 0, *, allow_plain: bool = False
) -> FaceSet:
    """All (or a seeded random ``max_images``) faces of shard datasets, with their landmarks when every
    shard has the optional ``landmarks`` column (DuetFace's client takes each face's ROI from them)."""
    from facesynth.core.shard_reader import ShardDataset, sources_have_column

    with_landmarks = sources_have_column(list(sources), "landmarks", allow_plain=allow_plain)
    columns = ["identity", "landmarks"] if with_landmarks else ["identity"]
    dataset = ShardDataset(
        list(sources), shuffle=False, columns=columns, even_split=False, allow_plain=allow_plain
    )
    images, identities, landmarks = [], [], []
    for row in dataset:
        images.append(row["image"])
        identities.append(str(row["identity"]))
        if with_landmarks:
            landmarks.append(row["landmarks"])
    if not images:
        raise FacesynthError(f"{list(sources)}: no images")
    faces = FaceSet(torch.stack(images), identities, torch.stack(landmarks) if with_landmarks else None)
    return faces.subsample(max_images, seed)


class AtInputSize(torch.nn.Module):
    """A differentiable encoder module that first resizes its input to the size it was trained at."""

    def __init__(self, module: torch.nn.Module, size: Sequence[int] | None):
        super().__init__()
        self.module = module
        self.size = None if size is None else tuple(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images if self.size is None else resize_faces(images, self.size))


def split_by_identity(faces: FaceSet, fraction: float) -> tuple[FaceSet, FaceSet]:
    """Split faces into two identity-disjoint parts: the first ``fraction`` of sorted identities, the rest."""
    names = sorted(set(faces.identities))
    if len(names) < 2:
        raise FacesynthError(f"need at least 2 identities to split, found {len(names)}")
    cut = min(max(1, round(fraction * len(names))), len(names) - 1)
    first = set(names[:cut])
    mask = torch.tensor([i in first for i in faces.identities])
    return faces.select(torch.nonzero(mask).flatten()), faces.select(torch.nonzero(~mask).flatten())


def check_disjoint(public: Sequence[str], victims: Sequence[str]) -> None:
    """Refuse an attack whose public set shares identities with the victims."""
    shared = sorted(set(public) & set(victims))
    if shared:
        raise FacesynthError(
            f"the attacker's public set and the victims share {len(shared)} identities (e.g. {shared[:3]}); "
            "the attack must be trained on identity-disjoint faces"
        )


def labels_of(identities: Sequence[str]) -> torch.Tensor:
    index = {name: i for i, name in enumerate(sorted(set(identities)))}
    return torch.tensor([index[i] for i in identities], dtype=torch.long)


def target_protect_fn(
    target: Any,
    device: str = "cpu",
    landmarks_of: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> tuple[Callable, dict[str, Any]]:
    """(protect_fn, description) for a privacy method or :data:`RGB_TARGET`; ``landmarks_of`` gives a
    batch's landmarks to methods that use them (:func:`facesynth.privacy.attacks.landmarks_by_content`)."""
    if isinstance(target, str) and target == RGB_TARGET:
        return (lambda images, seed: images), {"method": RGB_TARGET, "payload_bytes_per_query": 3 * 112 * 112}
    method = target
    method.eval()
    if not method.uses_landmarks:
        landmarks_of = None

    def protect(images: torch.Tensor, seed: int):
        landmarks = None if landmarks_of is None else landmarks_of(images)
        return method.protect(images.to(device), seed=seed, landmarks=landmarks).to("cpu")

    return protect, {"method": method.name, "key_id": method.key_id()}


def attack_config(config: AttackStageConfig):
    from facesynth.privacy.attacks import AttackConfig, DecoderConfig

    return AttackConfig(
        decoder=DecoderConfig(
            block_out_channels=tuple(config.decoder_widths),
            lr=config.decoder_lr,
            steps=config.decoder_steps,
            batch_size=config.batch_size,
            identity_weight=config.identity_weight,
            seed=config.seed,
            lr_schedule=config.decoder_lr_schedule,
        ),
        ridge=config.ridge,
        ridge_mode=config.ridge_mode,
        ridge_alpha=config.ridge_alpha,
        ridge_kernel=config.ridge_kernel,
        ridge_positions=config.ridge_positions,
        ridge_pool=config.ridge_pool,
        far=config.far,
        batch_size=config.batch_size,
        view_draws=config.view_draws,
    )


def save_samples(
    originals: torch.Tensor, recoveries: dict[str, torch.Tensor], path: Path, count: int = 8
) -> Path:
    """A PNG grid: the first row holds originals, each further row one attacker's recoveries."""
    from PIL import Image

    rows = [originals[:count]] + [rec[:count] for rec in recoveries.values()]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows*H, count*W)
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


METRIC_COLUMNS = (
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("identity_leakage", "identity leakage"),
    ("attack_success", "success @FAR"),
    ("rank1_identification", "rank-1"),
)


def markdown_report(results: dict[str, Any]) -> str:
    """Per-attacker table of one attack run."""
    lines = [
        f"# Recovery attack on `{results['target']['method']}`",
        "",
        f"public faces: {results['num_public']} ({results['num_public_identities']} identities); "
        f"victims: {results['num_victims']} ({results['num_victim_identities']} identities, disjoint); "
        f"encoder: {results.get('encoder') or 'none'}; FAR {results['far']:g}",
        "",
        "| attacker | " + " | ".join(label for _, label in METRIC_COLUMNS) + " |",
        "|---" * (len(METRIC_COLUMNS) + 1) + "|",
    ]
    for name, metrics in results["attackers"].items():
        cells = [f"{metrics[key]:.3f}" if key in metrics else "n/a" for key, _ in METRIC_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref = next(iter(results["attackers"].values()))
    if "reference_tar" in ref:
        lines += ["", f"Originals verified at this FAR (ceiling for success): {ref['reference_tar']:.3f}."]
    multi = results.get("multi_query")
    if multi:
        lines += [
            "",
            "## Multi-query attacks (k payloads of each face combined)",
            "",
            "| k | attacker | " + " | ".join(label for _, label in METRIC_COLUMNS) + " |",
            "|---" * (len(METRIC_COLUMNS) + 2) + "|",
        ]
        for k, attackers in multi["by_k"].items():
            for name, metrics in attackers.items():
                if name == "view":
                    continue
                cells = [f"{metrics[key]:.3f}" if key in metrics else "n/a" for key, _ in METRIC_COLUMNS]
                lines.append(f"| {k} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_attack_stage(config: AttackStageConfig) -> dict[str, Any]:
    """Run the attack described by ``config`` and write its report; returns the JSON-able results."""
    from facesynth.core.atomic_io import write_json_atomic
    from facesynth.privacy.api import load_privacy_method
    from facesynth.privacy.attacks import landmarks_by_content, run_attack

    start = time.perf_counter()
    if config.device == "auto":
        config = config.model_copy(update={"device": "cuda" if torch.cuda.is_available() else "cpu"})
    out = Path(config.output_dir)
    torch.manual_seed(config.seed)
    plain = config.allow_plain_parquet
    if config.victims:
        public = load_faces(config.public, config.max_public_images, config.seed, allow_plain=plain)
        victims = load_faces(config.victims, config.max_victim_images, config.seed + 1, allow_plain=plain)
    else:
        public, victims = split_by_identity(
            load_faces(config.public, None, config.seed, allow_plain=plain), config.public_fraction
        )
        public = public.subsample(config.max_public_images, config.seed)
        victims = victims.subsample(config.max_victim_images, config.seed + 1)
    check_disjoint(public.identities, victims.identities)
    landmarks_of = None
    if config.target == RGB_TARGET:
        target: Any = RGB_TARGET
    else:
        target = load_privacy_method(config.target, config.device)
        if tuple(public.images.shape[-2:]) != tuple(target.input_size):
            # the client protects faces at the model's input size, so that is what the attacker recovers
            logger.info(
                "attack: faces resized from %s to the target's input size %s",
                tuple(public.images.shape[-2:]),
                target.input_size,
            )
            public, victims = public.resized(target.input_size), victims.resized(target.input_size)
        if target.uses_landmarks and public.landmarks is not None and victims.landmarks is not None:
            landmarks_of = landmarks_by_content(
                torch.cat([public.images, victims.images]), torch.cat([public.landmarks, victims.landmarks])
            )
    protect_fn, description = target_protect_fn(target, config.device, landmarks_of)
    if target != RGB_TARGET and target.uses_landmarks:
        description["landmarks"] = "per face" if landmarks_of is not None else "template (none in the shards)"
    public_ids, victim_ids = public.identities, victims.identities
    public, victims = public.images, victims.images

    embed = identity_module = None
    if config.encoder:
        from facesynth.recognizers.encoders import load_encoder

        encoder = load_encoder(config.encoder, device=config.device)
        size = encoder.input_size

        def embed(images: torch.Tensor) -> torch.Tensor:  # the encoder sees faces at its own input size
            return encoder.embed(images if size is None else resize_faces(images, size))

        if config.identity_weight > 0:
            if not getattr(encoder, "differentiable", False):
                raise FacesynthError(
                    f"identity_weight > 0 needs a differentiable (torch:) encoder, got {config.encoder}"
                )
            identity_module = AtInputSize(encoder.model, size)
    elif config.identity_weight > 0:
        raise FacesynthError("identity_weight > 0 needs an encoder")

    metrics, recoveries, _ = run_attack(
        protect_fn,
        public,
        victims,
        labels_of(victim_ids),
        attack_config(config),
        embed=embed,
        identity_encoder=identity_module,
        progress=config.progress,
    )
    view = metrics.pop("view")
    multi = None
    if config.multi_query_ks and target != RGB_TARGET and target.randomised:
        from facesynth.privacy.multi_query import multi_query_attack

        multi = multi_query_attack(
            target,
            public,
            victims,
            labels_of(victim_ids),
            attack_config(config),
            config.multi_query_ks,
            embed,
        )
    results = {
        "target": description,
        "target_path": config.target,
        "encoder": config.encoder,
        "far": config.far,
        "num_public": int(public.shape[0]),
        "num_public_identities": len(set(public_ids)),
        "num_victims": int(victims.shape[0]),
        "num_victim_identities": len(set(victim_ids)),
        "attack_view_channels": view["channels"],
        "attackers": metrics,
        "multi_query": multi,
        "config": config.to_json_dict(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "attack.json", results)
    (out / "attack.md").write_text(markdown_report(results), encoding="utf-8")
    save_samples(victims, recoveries, out / "samples.png")
    return results
