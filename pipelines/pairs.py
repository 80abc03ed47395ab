"""Verification pairs from a shard dataset: held-out identities become a benchmark.

Genuine pairs are drawn from every identity's image pairs and impostor pairs from images of two
different identities, as many of each, seeded. The result is a
:class:`~facesynth.recognizers.benchmark_files.VerificationSet` that ``facesynth bench`` and the
recognizer trainer read like LFW, and that :func:`write_pairs_bin` saves in insightface's ``.bin``
format.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from facesynth.core.errors import ShardError
from facesynth.core.shard_format import decode_image
from facesynth.core.shard_reader import read_columns, sources_have_column
from facesynth.recognizers.benchmark_files import VerificationSet, write_bin


def verification_set_from_shards(
    dataset: str | Path, num_pairs: int = 3000, seed: int = 0, name: str | None = None
) -> VerificationSet:
    """``num_pairs`` pairs (half genuine, half impostor) over the images of ``dataset``.

    When every shard has the optional ``landmarks`` column, the set carries them (NaN where unknown).
    """
    with_landmarks = sources_have_column(dataset, "landmarks")
    table = read_columns(dataset, ["image", "label", *(["landmarks"] if with_landmarks else [])])
    labels = table["label"].to_numpy()
    by_label: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(row)
    if len(by_label) < 2:
        raise ShardError(
            f"{dataset}: needs at least 2 identities to build impostor pairs, found {len(by_label)}"
        )
    genuine_all = [pair for rows in by_label.values() for pair in itertools.combinations(rows, 2)]
    if not genuine_all:
        raise ShardError(f"{dataset}: no identity has 2 or more images, so there are no genuine pairs")
    rng = np.random.default_rng(seed)
    half = max(1, num_pairs // 2)
    picked = rng.choice(len(genuine_all), size=min(half, len(genuine_all)), replace=False)
    genuine = [genuine_all[i] for i in sorted(picked)]
    impostor: set[tuple[int, int]] = set()
    while len(impostor) < len(genuine):
        a, b = (int(x) for x in rng.integers(0, len(labels), size=2))
        if labels[a] != labels[b]:
            impostor.add((min(a, b), max(a, b)))
    # interleave genuine and impostor pairs so that every one of the protocol's 10 contiguous folds
    # holds both kinds in equal numbers, as LFW's pairs.txt does
    pairs = [pair for both in zip(genuine, sorted(impostor), strict=True) for pair in both]
    images = pc.struct_field(table["image"], "bytes").to_pylist()
    sources = [images[i] for pair in pairs for i in pair]
    issame = np.array([True, False] * len(genuine))
    landmarks = None
    if with_landmarks:
        values = table["landmarks"].to_pylist()
        unknown = np.full((5, 2), np.nan, dtype=np.float32)
        landmarks = np.stack(
            [unknown if values[i] is None else np.asarray(values[i], np.float32) for p in pairs for i in p]
        )
    return VerificationSet(
        name=name or Path(dataset).name,
        sources=sources,
        issame=issame,
        origin=str(dataset),
        landmarks=landmarks,
    )


def write_pairs_bin(dataset: str | Path, path: str | Path, num_pairs: int = 3000, seed: int = 0) -> Path:
    """Save :func:`verification_set_from_shards` as an insightface ``.bin`` (PNG-encoded, lossless)."""
    pairs = verification_set_from_shards(dataset, num_pairs, seed)
    images = [decode_image(source) for source in pairs.sources]
    return write_bin(path, images, pairs.issame.tolist(), variant="bytes", image_format="PNG")
