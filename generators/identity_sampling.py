"""What to render for a new synthetic dataset: identity anchors, per-image conditions, attributes.

ID3's dataset recipe (Xu et al., NeurIPS 2024, arXiv 2409.17576: Algorithm 3 and Appendix C):

1. N anchors w_i on the unit sphere, spread by a Tammes solver (:mod:`facesynth.generators.tammes`),
   or placed at random (the paper's "ID3-random" ablation), or read from a ``.npy`` file.
2. Per image j of identity i a target cosine v_ij ~ Uniform[lb, ub] and the condition
   ``y_ij = v_ij * w_i + sqrt(1 - v_ij^2) * u_ij`` with u_ij a random unit vector orthogonal to w_i,
   so ``<y_ij, w_i> = v_ij`` exactly (:func:`cosine_band_embeddings`). The construction is our
   reading of the paper (the code was never released); defaults [lb, ub] = [0.7, 0.9].
3. Attributes (yaw, pitch, roll in degrees, age in years) drawn from the empirical joint
   distribution of a training set: whole rows of its ``attributes`` column are resampled, so pose
   and age stay correlated as in the data.

Determinism: anchors depend only on (dataset seed, N, anchor settings) and are the same on every
process; everything per image comes from the request's own seed, itself a pure function of
(dataset seed, label, index). So a dataset does not depend on batching or the number of processes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.generators.attributes import ATTRIBUTE_NAMES, NEUTRAL_ATTRIBUTES, check_attributes

logger = logging.getLogger(__name__)

#: Default intra-class cosine band (one of the two bands studied in the paper).
DEFAULT_COS_BAND = (0.7, 0.9)
#: Tolerance on ||x|| - 1 when checking that embeddings are unit vectors.
NORM_TOLERANCE = 1e-3

_ANCHOR_SEED_TAG = 0x1D3A  # separates the anchor stream from per-image seeds of the same dataset seed


# ----------------------------------------------------------------------------------------- validation


def check_embeddings(
    embeddings: np.ndarray | Sequence, dim: int | None = None, *, name: str = "embeddings"
) -> np.ndarray:
    """Return ``embeddings`` as a float32 (N, D) array, or raise a clear error.

    Catches the three mistakes that silently ruin a generated dataset: the wrong width for the
    model's identity encoder, NaN/inf values, and vectors that were never L2-normalised.
    """
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise FacesynthError(f"{name}: expected a (rows, dim) array, got shape {tuple(array.shape)}")
    if dim is not None and array.shape[1] != dim:
        raise FacesynthError(f"{name}: embeddings are {array.shape[1]}-d but the model expects {dim}-d")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise FacesynthError(
            f"{name}: {int(bad.sum())} row(s) contain NaN or inf (first: row {int(np.argmax(bad))})"
        )
    norms = np.linalg.norm(array, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        first = int(np.argmax(off))
        raise FacesynthError(
            f"{name}: {int(off.sum())} row(s) are not unit vectors (row {first} has norm {norms[first]:.4f}); "
            "L2-normalise identity embeddings first"
        )
    return array.astype(np.float32)


def attribute_table(table: np.ndarray | Sequence, *, name: str = "attributes") -> np.ndarray:
    """Return a (K, 4) float32 table of (yaw, pitch, roll, age) in natural units, or raise.

    Ranges and units are those of :mod:`facesynth.generators.attributes`.
    """
    array = np.asarray(table, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.shape[0] == 0:
        raise FacesynthError(f"{name}: the attribute table is empty")
    check_attributes(array, name)
    return array.astype(np.float32)


def attributes_to_mapping(row: np.ndarray) -> dict[str, float]:
    return {key: float(value) for key, value in zip(ATTRIBUTE_NAMES, row, strict=True)}


def check_cos_band(lb: float, ub: float) -> tuple[float, float]:
    """Validate an intra-class cosine band [lb, ub] (a sub-interval of [-1, 1])."""
    lb, ub = float(lb), float(ub)
    if not (math.isfinite(lb) and math.isfinite(ub)) or not -1.0 <= lb <= ub <= 1.0:
        raise ConfigError(f"cosine band: need -1 <= cos_lb <= cos_ub <= 1, got [{lb}, {ub}]")
    return lb, ub


# ------------------------------------------------------------------------------- cosine construction


def cosine_band_embeddings(
    anchor: np.ndarray, cosines: np.ndarray | Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Unit vectors (M, D) whose cosine to the unit ``anchor`` is exactly ``cosines`` (M,).

    ``x = c * a + sqrt(1 - c^2) * u`` with ``u`` a uniformly random unit vector orthogonal to ``a``:
    then ``<x, a> = c`` and ``||x|| = 1`` by construction (float64 arithmetic), and the direction
    away from the anchor is uniform on the orthogonal sphere.
    """
    a = np.asarray(anchor, dtype=np.float64).reshape(-1)
    a = a / np.linalg.norm(a)
    c = np.asarray(cosines, dtype=np.float64).reshape(-1)
    if ((c < -1.0) | (c > 1.0) | ~np.isfinite(c)).any():
        raise FacesynthError(f"cosine_band_embeddings: cosines must lie in [-1, 1], got {c}")
    g = rng.standard_normal((c.shape[0], a.shape[0]))
    u = g - (g @ a)[:, None] * a[None, :]
    u = u - (u @ a)[:, None] * a[None, :]  # second pass removes rounding left by the first
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return c[:, None] * a[None, :] + np.sqrt(np.clip(1.0 - c * c, 0.0, None))[:, None] * u


# --------------------------------------------------------------------------------------- attributes


@dataclass
class AttributeSampler:
    """Resamples whole rows of an empirical (K, 4) attribute table (yaw, pitch, roll, age).

    ``measured`` says, per attribute, which fraction of the table's values were real measurements;
    the rest were missing in the source and hold the neutral value (see :meth:`describe`).
    """

    table: np.ndarray
    source: str
    measured: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.table = attribute_table(self.table, name=f"attributes from {self.source}")
        if self.measured is None:
            self.measured = dict.fromkeys(ATTRIBUTE_NAMES, 1.0)

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        return attributes_to_mapping(self.table[int(rng.integers(self.table.shape[0]))])

    @property
    def real_attributes(self) -> list[str]:
        """Attributes measured in at least half of the table's rows (the others are mostly neutral)."""
        return [name for name in ATTRIBUTE_NAMES if (self.measured or {}).get(name, 0.0) >= 0.5]

    def describe(self) -> str:
        """One line for logs and reports: which attributes are real and how much was filled."""
        parts = []
        for name in ATTRIBUTE_NAMES:
            share = (self.measured or {}).get(name, 0.0)
            if share >= 1.0:
                parts.append(f"{name} real")
            elif share <= 0.0:
                parts.append(f"{name} neutral ({NEUTRAL_ATTRIBUTES[name]:g}, not measured)")
            else:
                parts.append(f"{name} real in {share:.0%} of rows, else neutral {NEUTRAL_ATTRIBUTES[name]:g}")
        return f"attributes from {self.source}: " + "; ".join(parts)

    @classmethod
    def neutral(cls) -> AttributeSampler:
        return cls(
            np.array([[NEUTRAL_ATTRIBUTES[k] for k in ATTRIBUTE_NAMES]]),
            "neutral default",
            dict.fromkeys(ATTRIBUTE_NAMES, 0.0),
        )

    @classmethod
    def from_shards(cls, sources: str | os.PathLike | Sequence[str | os.PathLike]) -> AttributeSampler:
        """The ``attributes`` of v1 shard folders/files (no images are read).

        Rows whose attributes are entirely null are skipped; a null field inside a row (e.g. pose
        measured, age unknown) takes the neutral value and counts as not measured.
        """
        from facesynth.core.shard_reader import read_columns

        column = read_columns(sources, ["attributes"]).column("attributes").combine_chunks()
        valid = column.filter(column.is_valid())
        if len(valid) == 0:
            raise FacesynthError(f"{sources}: the reference shards have no attributes to sample from")
        columns, measured = [], {}
        for name in ATTRIBUTE_NAMES:
            field = valid.field(name)
            values = field.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
            known = ~np.isnan(values)
            measured[name] = float(known.mean())
            columns.append(np.where(known, values, NEUTRAL_ATTRIBUTES[name]))
        return cls(np.stack(columns, axis=1), f"shards {sources}", measured)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> AttributeSampler:
        """A ``.npy`` (K, 4) array, a ``.csv`` with columns yaw,pitch,roll,age, or a shard folder/file."""
        path = Path(path)
        if not path.exists():
            raise FacesynthError(f"{path}: attribute file not found")
        if path.suffix == ".npy":
            try:
                table = np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise FacesynthError(f"{path}: not a numeric .npy array ({exc})") from None
        elif path.suffix == ".csv":
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                missing = set(ATTRIBUTE_NAMES) - set(reader.fieldnames or [])
                if missing:
                    raise FacesynthError(f"{path}: CSV lacks columns {sorted(missing)}")
                try:
                    table = np.array([[float(row[k]) for k in ATTRIBUTE_NAMES] for row in reader])
                except ValueError as exc:
                    raise FacesynthError(f"{path}: non-numeric attribute value ({exc})") from None
        else:
            return cls.from_shards(path)
        return cls(table, str(path))


def load_attribute_sampler(
    spec: str, reference: Sequence[str | os.PathLike] | None = None
) -> AttributeSampler | None:
    """``"none"`` (the no-attribute ablation) -> None; ``"empirical"`` -> the reference shards'
    attributes, or the neutral default when there are no reference shards; otherwise a file path."""
    if spec == "none":
        return None
    if spec == "empirical":
        if reference:
            return AttributeSampler.from_shards(list(reference))
        logger.warning(
            "attributes='empirical' without reference shards: using the neutral default %s for every image",
            NEUTRAL_ATTRIBUTES,
        )
        return AttributeSampler.neutral()
    return AttributeSampler.from_file(spec)


# ------------------------------------------------------------------------------------------ anchors


def anchor_seed(dataset_seed: int) -> int:
    """The seed of a dataset's anchors: derived from, but independent of, the per-image seeds."""
    return int(
        np.random.SeedSequence([int(dataset_seed) & 0xFFFFFFFF, _ANCHOR_SEED_TAG]).generate_state(1)[0]
    )


def load_anchor_file(path: str | os.PathLike, num_identities: int, dim: int | None) -> np.ndarray:
    """Precomputed anchors from a ``.npy`` (rows >= N, D); the first N rows are used."""
    path = Path(path)
    if not path.is_file():
        raise FacesynthError(f"{path}: anchor file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise FacesynthError(f"{path}: not a numeric .npy array ({exc})") from None
    array = check_embeddings(array, dim, name=str(path))
    if array.shape[0] < num_identities:
        raise FacesynthError(
            f"{path}: holds {array.shape[0]} anchors but {num_identities} identities are asked"
        )
    return array[:num_identities]


def reference_embeddings(sources: Sequence[str | os.PathLike], dim: int | None = None) -> np.ndarray:
    """The ``embedding`` column of reference shards (e.g. the generator's training set), validated."""
    from facesynth.core.shard_reader import read_columns

    column = read_columns(list(sources), ["embedding"]).column("embedding").combine_chunks()
    if column.null_count:
        column = column.filter(column.is_valid())
    width = column.type.list_size
    flat = column.values.to_numpy(zero_copy_only=False).reshape(-1, width)
    return check_embeddings(flat, dim, name=f"reference embeddings in {list(map(str, sources))}")


def make_anchors(
    num_identities: int,
    dim: int,
    *,
    seed: int,
    method: str = "tammes",
    subspace_rank: int | None = None,
    reference: Sequence[str | os.PathLike] | None = None,
    tammes_steps: int = 300,
    device: str = "cpu",
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Identity anchors (N, D) float32 unit rows: ``"tammes"``, ``"random"`` or a ``.npy`` path.

    With ``subspace_rank`` the anchors are restricted to the shell of the reference embeddings'
    PCA subspace (needs ``reference`` shards with an embedding column); see
    :class:`facesynth.generators.tammes.SphereSubspace`. With ``cache_dir`` a computed placement is
    stored there as ``anchors-<N>x<D>-<settings hash>.npy`` (atomically) and reused by later calls with
    the same settings: every process of a run, and every resume, then uses the very same anchors.
    """
    if method not in ("tammes", "random"):
        return load_anchor_file(method, num_identities, dim)
    cache = None
    if cache_dir is not None:
        from facesynth.core.atomic_io import config_hash

        settings = {
            "n": num_identities,
            "dim": dim,
            "seed": seed,
            "method": method,
            "subspace_rank": subspace_rank,
            "reference": [str(Path(r).resolve()) for r in reference or []],
            "tammes_steps": tammes_steps,
            "device": str(device),
        }
        cache = Path(cache_dir) / f"anchors-{num_identities}x{dim}-{config_hash(settings)}.npy"
        if cache.is_file():
            logger.info("anchors: reusing %s", cache)
            return load_anchor_file(cache, num_identities, dim)
    anchors = _compute_anchors(
        num_identities, dim, seed, method, subspace_rank, reference, tammes_steps, device, progress
    )
    if cache is not None:
        from facesynth.core.atomic_io import atomic_write

        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as handle:
            np.save(handle, anchors, allow_pickle=False)
    return anchors


def _compute_anchors(
    num_identities: int,
    dim: int,
    seed: int,
    method: str,
    subspace_rank: int | None,
    reference: Sequence[str | os.PathLike] | None,
    tammes_steps: int,
    device: str,
    progress: bool,
) -> np.ndarray:
    from facesynth.generators.tammes import SphereSubspace, random_sphere_points, solve_tammes

    subspace = None
    if subspace_rank:
        if not reference:
            raise ConfigError("anchor subspace: subspace_rank needs reference shards with embeddings")
        subspace = SphereSubspace.fit(reference_embeddings(reference, dim), int(subspace_rank))
    seed = anchor_seed(seed)
    if method == "random" or num_identities < 2:
        anchors = random_sphere_points(num_identities, dim, seed, subspace)
    else:
        result = solve_tammes(
            num_identities,
            dim,
            seed=seed,
            steps=tammes_steps,
            subspace=subspace,
            device=device,
            progress=progress,
        )
        anchors = result.anchors
    return check_embeddings(anchors.numpy(), dim, name="anchors")


# ------------------------------------------------------------------------------------- per-image plan


@dataclass
class ImageCondition:
    """What one image is rendered from: the identity condition, its cosine to the anchor, attributes."""

    embedding: np.ndarray  # (D,) float32 unit vector
    anchor_cos: float
    attributes: dict[str, float] | None


@dataclass
class IdentityPlan:
    """Anchors plus the per-image sampling rules; :meth:`condition` is a pure function of its inputs."""

    anchors: np.ndarray
    cos_lb: float = DEFAULT_COS_BAND[0]
    cos_ub: float = DEFAULT_COS_BAND[1]
    attributes: AttributeSampler | None = None

    def __post_init__(self) -> None:
        self.anchors = check_embeddings(self.anchors, name="anchors")
        self.cos_lb, self.cos_ub = check_cos_band(self.cos_lb, self.cos_ub)

    @property
    def dim(self) -> int:
        return int(self.anchors.shape[1])

    def anchor(self, label: int) -> np.ndarray:
        if not 0 <= label < self.anchors.shape[0]:
            raise FacesynthError(f"label {label} outside 0..{self.anchors.shape[0] - 1}")
        return self.anchors[label]

    def condition(self, label: int, seed: int) -> ImageCondition:
        """The condition of the image of class ``label`` whose request seed is ``seed``."""
        rng = np.random.default_rng(int(seed))
        cosine = float(rng.uniform(self.cos_lb, self.cos_ub)) if self.cos_ub > self.cos_lb else self.cos_lb
        embedding = cosine_band_embeddings(self.anchor(label), [cosine], rng)[0]
        attributes = self.attributes.sample(rng) if self.attributes is not None else None
        return ImageCondition(embedding.astype(np.float32), cosine, attributes)

    def conditions(self, requests: Sequence) -> list[ImageCondition]:
        """One condition per :class:`~facesynth.generators.registry.SampleRequest`."""
        return [self.condition(r.label, r.seed) for r in requests]


class IdentityPlanOptions(StageConfig):
    """The identity-sampling options every identity-conditioned generator (ID3, Arc2Face) shares:
    where the N anchors sit on the sphere and how far each image's condition strays from its anchor."""

    cos_lb: float = Field(
        default=DEFAULT_COS_BAND[0], ge=-1.0, le=1.0, description="lowest cosine of a condition to its anchor"
    )
    cos_ub: float = Field(
        default=DEFAULT_COS_BAND[1],
        ge=-1.0,
        le=1.0,
        description="highest cosine of a condition to its anchor",
    )
    anchors: str = Field(default="tammes", description="'tammes', 'random' or a .npy file of unit anchors")
    tammes_steps: int = Field(default=300, ge=0, description="optimisation steps of the Tammes solver")
    anchor_device: str = Field(default="cpu", description="device of the Tammes solve (cpu: reproducible)")
    anchor_cache: str | None = Field(
        default=None, description="folder where computed anchors are stored and reused (resume, many ranks)"
    )
    subspace_rank: int | None = Field(
        default=None, ge=2, description="restrict anchors to the PCA shell of the reference embeddings"
    )
    reference: list[str] = Field(
        default_factory=list, description="shards with embeddings: anchor subspace (and attribute table)"
    )

    @field_validator("reference", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, (str, Path)) else value


def realised_anchor_cos(encoder, images: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Cosine between each generated image's re-embedding under ``encoder`` and its identity anchor.

    ``images`` are (B, H, W, 3) uint8, ``anchors`` the (B, D) anchors of their identities; this is the
    ``id_cos`` column every identity-conditioned generator (ID3, Arc2Face) writes.
    """
    import torch

    from facesynth.generators.id3_loss import embed_for_identity
    from facesynth.recognizers.encoders import images_to_tensor

    batch = images_to_tensor(images)
    device = getattr(encoder, "device", None)
    if isinstance(device, torch.device):
        batch = batch.to(device)
    with torch.no_grad():
        embedded = embed_for_identity(encoder, batch).double().cpu().numpy()
    if embedded.shape[1] != anchors.shape[1]:
        raise FacesynthError(
            f"evaluation encoder gives {embedded.shape[1]}-d embeddings, anchors are {anchors.shape[1]}-d"
        )
    return (embedded * anchors.astype(np.float64)).sum(axis=1)
