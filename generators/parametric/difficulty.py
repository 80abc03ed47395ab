"""The parametric renderer's difficulty check: how far a raw-pixel verifier gets on its faces.

A renderer whose nuisance is too weak lets this verifier approach 100% accuracy; one without identity
signal leaves it at 50%. The metrics come from :mod:`facesynth.core.verification_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facesynth.core.verification_metrics import balanced_pairs, best_threshold_accuracy
from facesynth.generators.parametric.renderer import ParametricRenderer
from facesynth.generators.registry import (
    SampleRequest,
)


def raw_pixel_features(images: np.ndarray, side: int = 32) -> np.ndarray:
    """The naive verifier's features: grey, resized to ``side`` x ``side``, mean-removed, unit norm."""
    from PIL import Image

    feats = np.empty((len(images), side * side), dtype=np.float64)
    for i, image in enumerate(images):
        grey = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L")
        feats[i] = np.asarray(grey.resize((side, side), Image.BILINEAR), dtype=np.float64).reshape(-1)
    feats -= feats.mean(axis=1, keepdims=True)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    return feats


def raw_pixel_verification(
    generator: ParametricRenderer,
    labels: Sequence[int],
    images_per_identity: int = 4,
    pair_seed: int = 0,
) -> dict[str, float]:
    """Best-threshold accuracy of a raw-pixel cosine verifier on fresh identities of ``generator``.

    Images of label ``l`` are requests ``(l, i, sample_seed(generator.seed, l, i))``. A renderer whose
    nuisance is too weak lets this verifier approach 100%; one without identity signal leaves it at 50%.
    """
    from facesynth.generators.registry import sample_seed

    labels = [int(label) for label in labels]
    requests = [
        SampleRequest(label, i, sample_seed(generator.seed, label, i))
        for label in labels
        for i in range(images_per_identity)
    ]
    images = np.stack([face.image for face in generator.generate(requests)])
    feats = raw_pixel_features(images).reshape(len(labels), images_per_identity, -1)
    pairs = balanced_pairs(len(labels), images_per_identity, pair_seed)
    scores = np.einsum("nd,nd->n", feats[pairs[:, 0], pairs[:, 1]], feats[pairs[:, 2], pairs[:, 3]])
    genuine = pairs[:, 4].astype(bool)
    return {
        "accuracy": best_threshold_accuracy(scores, genuine),
        "genuine_mean_cos": float(scores[genuine].mean()),
        "impostor_mean_cos": float(scores[~genuine].mean()),
        "pairs": float(len(pairs)),
    }
