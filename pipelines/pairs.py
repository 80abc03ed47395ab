"""Verification pairs from a shard dataset: held-out identities become a benchmark.

Genuine pairs are drawn from every identity's image pairs and impostor pairs from images of two
different identities, as many of each, seeded (:func:`facesynth.core.verification_metrics.sample_pairs`). The result is a
:class:`~facesynth.recognizers.benchmark_files.VerificationSet` that ``facesynth bench`` and the
recognizer trainer read like LFW, and that :func:`write_pairs_bin` saves in insightface's ``.bin``
format.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from facesynth.core.errors import FacesynthError, ShardError
from facesynth.core.shard_format import decode_image
from facesynth.core.shard_reader import read_columns
from facesynth.core.verification_metrics import sample_pairs
from facesynth.recognizers.benchmark_files import VerificationSet, write_bin


def verification_set_from_shards(
    dataset: str | Path, num_pairs: int = 3000, seed: int = 0, name: str | None = None
) -> VerificationSet:
    """``num_pairs`` pairs (half genuine, half impostor) over the images of ``dataset``."""
    table = read_columns(dataset, ["image", "label"])
    try:
        pairs, issame = sample_pairs(table["label"].to_numpy(), num_pairs, seed)
    except FacesynthError as exc:
        raise ShardError(f"{dataset}: {exc}") from None
    images = pc.struct_field(table["image"], "bytes").to_pylist()
    sources = [images[i] for i in pairs.ravel()]
    return VerificationSet(
        name=name or Path(dataset).name, sources=sources, issame=issame, origin=str(dataset)
    )


def write_pairs_bin(dataset: str | Path, path: str | Path, num_pairs: int = 3000, seed: int = 0) -> Path:
    """Save :func:`verification_set_from_shards` as an insightface ``.bin`` (PNG-encoded, lossless)."""
    pairs = verification_set_from_shards(dataset, num_pairs, seed)
    images = [decode_image(source) for source in pairs.sources]
    return write_bin(path, images, pairs.issame.tolist(), variant="bytes", image_format="PNG")
