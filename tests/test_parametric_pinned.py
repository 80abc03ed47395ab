"""The parametric renderer's output is pinned: the same seeds give the same dataset, byte for byte.

The hash was computed before ``generators/parametric_renderer.py`` was split into
``generators/parametric/``; a refactor that changes a pixel, a landmark or an attribute fails here.
(Pixels are bit-identical for one numpy build on one CPU family; see the renderer's module docstring.)
"""

from __future__ import annotations

import hashlib

import numpy as np

from facesynth.generators.registry import SampleRequest, build_generator, sample_seed

PINNED_SHA256 = "02320b760e6ede8c73f341be6f25c87b3c233c636914f7d975ddbcdfb425e634"


def dataset_digest() -> str:
    """sha256 over images, landmarks and attributes of 4 identities x 3 images at two difficulties."""
    digest = hashlib.sha256()
    for difficulty in (0.0, 1.0):
        generator = build_generator("parametric", num_identities=4, seed=11, difficulty=difficulty)
        requests = [SampleRequest(k, i, sample_seed(11, k, i)) for k in range(4) for i in range(3)]
        for face in generator.generate(requests):
            digest.update(np.ascontiguousarray(face.image, dtype=np.uint8).tobytes())
            digest.update(repr(sorted((k, round(float(v), 6)) for k, v in face.attributes.items())).encode())
        digest.update(np.round(generator.landmarks(requests), 4).tobytes())
    return digest.hexdigest()


def test_same_seeds_give_the_same_dataset_as_before_the_split() -> None:
    assert dataset_digest() == PINNED_SHA256
