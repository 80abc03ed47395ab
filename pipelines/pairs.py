"""Verification pairs from a shard dataset: held-out identities become a benchmark.

Genuine pairs are drawn from every identity's image pairs and impostor pairs from images of two
different identities, as many of each, seeded. The result is a
:class:`~facesynth.recognizers.benchmark_files.VerificationSet` that ``facesynth bench`` and the
recognizer trainer read like LFW, and that :func:`write_pairs_bin` saves in insightface's ``.bin``
format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from pydantic import Field

from facesynth.core.atomic_io import TMP_SUFFIX
from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError, FacesynthError, ShardError
from facesynth.core.locks import output_lock
from facesynth.core.shard_format import decode_image
from facesynth.core.shard_reader import read_columns, sources_have_column
from facesynth.recognizers.benchmark_files import VerificationSet, write_bin


class PairsConfig(StageConfig):
    """Settings of ``facesynth pairs`` (and the runner's pairs stage)."""

    dataset: Path = Field(description="shard dataset folder of identities the recognizer never saw")
    out: Path = Field(description="output .bin file")
    num_pairs: int = Field(
        default=3000, ge=2, multiple_of=2, description="total pairs, half genuine and half impostor"
    )
    seed: int = Field(default=0, description="seed of the pair draw")
    allow_plain_parquet: bool = Field(
        default=False, description="read a folder of Parquet shards that has no facesynth.json, unchecked"
    )


#: Draws allowed per wanted impostor pair before giving up (each draw is an impostor; only repeats fail).
IMPOSTOR_DRAWS_PER_PAIR = 50


def _unrank_pair(k: int, n: int) -> tuple[int, int]:
    """The k-th pair (i < j) of range(n) in lexicographic order."""
    i = 0
    while k >= n - 1 - i:
        k -= n - 1 - i
        i += 1
    return i, i + 1 + k


def _genuine_pairs(groups: list[np.ndarray], half: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``half`` distinct same-identity pairs, drawn without listing every pair."""
    counts = np.array([len(g) * (len(g) - 1) // 2 for g in groups], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    picked = np.sort(rng.choice(int(starts[-1]), size=half, replace=False))
    pairs = []
    for k in picked:
        g = int(np.searchsorted(starts, k, side="right") - 1)
        i, j = _unrank_pair(int(k - starts[g]), len(groups[g]))
        pairs.append((int(groups[g][i]), int(groups[g][j])))
    return pairs


def _impostor_pairs(
    order: np.ndarray, bounds: np.ndarray, half: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``half`` distinct different-identity pairs. Each draw is an impostor (the second image is drawn
    outside the first one's identity), so only repeats are retried, and the draws are bounded."""
    n = len(order)
    group_of = np.empty(n, dtype=np.int64)
    for g in range(len(bounds) - 1):
        group_of[bounds[g] : bounds[g + 1]] = g
    chosen: set[tuple[int, int]] = set()
    for _ in range(IMPOSTOR_DRAWS_PER_PAIR * half + 1000):
        if len(chosen) == half:
            break
        a = int(rng.integers(n))
        g = group_of[a]
        b = int(rng.integers(n - (bounds[g + 1] - bounds[g])))
        if b >= bounds[g]:
            b += bounds[g + 1] - bounds[g]  # skip a's own identity block
        x, y = int(order[a]), int(order[b])
        chosen.add((min(x, y), max(x, y)))
    if len(chosen) < half:
        raise ShardError(
            f"found only {len(chosen)} distinct impostor pairs of {half} wanted after "
            f"{IMPOSTOR_DRAWS_PER_PAIR * half + 1000} draws; ask for fewer pairs"
        )
    return sorted(chosen)


def verification_set_from_shards(
    dataset: str | Path,
    num_pairs: int = 3000,
    seed: int = 0,
    name: str | None = None,
    *,
    allow_plain_parquet: bool = False,
) -> VerificationSet:
    """Exactly ``num_pairs`` pairs (half genuine, half impostor) over the images of ``dataset``.

    What the dataset allows is computed first (same-identity pairs, different-identity pairs); a
    request beyond it is refused with those numbers rather than silently shrunk. When every shard has
    the optional ``landmarks`` column, the set carries them (NaN where unknown).
    """
    if num_pairs < 2 or num_pairs % 2:
        raise ConfigError(
            f"--num-pairs {num_pairs}: need an even number of at least 2 (half genuine, half impostor)"
        )
    table = read_columns(dataset, ["label"], allow_plain=allow_plain_parquet)
    labels = table["label"].to_numpy()
    order = np.argsort(labels, kind="stable")
    _, bounds_start = np.unique(labels[order], return_index=True)
    bounds = np.append(bounds_start, len(labels)).astype(np.int64)
    groups = [order[bounds[g] : bounds[g + 1]] for g in range(len(bounds) - 1)]
    if len(groups) < 2:
        raise ShardError(
            f"{dataset}: needs at least 2 identities to build impostor pairs, found {len(groups)}"
        )
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    genuine_available = int((sizes * (sizes - 1) // 2).sum())
    if genuine_available == 0:
        raise ShardError(f"{dataset}: no identity has 2 or more images, so there are no genuine pairs")
    n = len(labels)
    impostor_available = n * (n - 1) // 2 - genuine_available
    half = num_pairs // 2
    if half > genuine_available or half > impostor_available:
        most = 2 * min(genuine_available, impostor_available)
        raise ShardError(
            f"{dataset}: --num-pairs {num_pairs} needs {half} genuine and {half} impostor pairs, but its "
            f"{len(groups)} identities and {n} images allow {genuine_available} genuine and "
            f"{impostor_available} impostor pairs; ask for at most {most}"
        )
    rng = np.random.default_rng(seed)
    genuine = _genuine_pairs(groups, half, rng)
    impostor = _impostor_pairs(order, bounds, half, rng)
    # interleave genuine and impostor pairs so that every one of the protocol's 10 contiguous folds
    # holds both kinds in equal numbers, as LFW's pairs.txt does
    pairs = [pair for both in zip(genuine, impostor, strict=True) for pair in both]
    wanted = sorted({i for pair in pairs for i in pair})
    images_table = read_columns(dataset, ["image"], allow_plain=allow_plain_parquet).take(wanted)
    images = dict(zip(wanted, pc.struct_field(images_table["image"], "bytes").to_pylist(), strict=True))
    sources = [images[i] for pair in pairs for i in pair]
    issame = np.array([True, False] * half)
    landmarks = None
    if sources_have_column(dataset, "landmarks", allow_plain=allow_plain_parquet):
        values = read_columns(dataset, ["landmarks"], allow_plain=allow_plain_parquet).take(wanted)
        points = dict(zip(wanted, values["landmarks"].to_pylist(), strict=True))
        unknown = np.full((5, 2), np.nan, dtype=np.float32)
        landmarks = np.stack(
            [unknown if points[i] is None else np.asarray(points[i], np.float32) for p in pairs for i in p]
        )
    return VerificationSet(
        name=name or Path(dataset).name,
        sources=sources,
        issame=issame,
        origin=str(dataset),
        landmarks=landmarks,
    )


def check_output_file(path: str | Path) -> Path:
    """Refuse an output that is a folder or cannot be written, before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise FacesynthError(f"--out {path}: is a folder; give a file name such as {path / 'pairs.bin'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe{TMP_SUFFIX}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FacesynthError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def write_pairs_bin(
    dataset: str | Path,
    path: str | Path,
    num_pairs: int = 3000,
    seed: int = 0,
    *,
    allow_plain_parquet: bool = False,
) -> Path:
    """Save :func:`verification_set_from_shards` as an insightface ``.bin`` (PNG-encoded, lossless).

    The output is checked first, locked while written, and written atomically (a full disk leaves the
    previous file intact). A dataset without a manifest needs ``allow_plain_parquet``.
    """
    path = check_output_file(path)
    with output_lock(path, "pairs", is_file=True):
        pairs = verification_set_from_shards(
            dataset, num_pairs, seed, allow_plain_parquet=allow_plain_parquet
        )
        images = []
        for i, source in enumerate(pairs.sources):
            try:
                images.append(decode_image(source))
            except Exception as exc:  # noqa: BLE001 - any decoder failure names the image
                raise ShardError(
                    f"{dataset}: the {'first' if i % 2 == 0 else 'second'} image of pair {i // 2} "
                    f"does not decode ({exc}); run `facesynth verify {dataset}`"
                ) from None
        return write_bin(path, images, pairs.issame.tolist(), variant="bytes", image_format="PNG")


def run_pairs(config: PairsConfig) -> Path:
    """The pairs stage: :func:`write_pairs_bin` with the settings of ``config``."""
    return write_pairs_bin(
        config.dataset,
        config.out,
        config.num_pairs,
        config.seed,
        allow_plain_parquet=config.allow_plain_parquet,
    )
