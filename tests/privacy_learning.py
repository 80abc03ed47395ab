"""Short privacy trainings on parametric faces, scored on unseen identities against the raw-pixel verifier.

Shared by ``tests/test_privacy_learns.py``; run as a script to print the figures for every method:
``python -m facesynth.tests.privacy_learning``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesynth.core.shard_format import ShardRow
from facesynth.tests.shard_fixtures import write_dataset

SIZE = 32  # training / protection resolution (the frontend's grid; 8x8 DCT blocks of an 8x upsample)
TRAIN_IDS, TRAIN_PER_ID = 40, 8
TEST_IDS, TEST_PER_ID = 40, 4
STEPS = 160  # per row unless its recipe says otherwise; two-stage methods split them


@dataclass(frozen=True)
class Recipe:
    """A row: the method, its stages (options, share of the row's steps) and the row's total steps."""

    method: str
    stages: list[tuple[dict[str, Any], float]]
    steps: int = STEPS


RECIPES: dict[str, Recipe] = {
    "dctdp": Recipe("dctdp", [({}, 1.0)]),
    "duetface": Recipe(
        "duetface",
        [({"stage": "client", "client_widths": [8, 8, 16, 16, 32]}, 0.25), ({"stage": "server"}, 0.75)],
    ),
    "partialface": Recipe("partialface", [({}, 1.0)]),
    # our residual generator (x' = x + g(x): it regenerates the face from step 1), half the steps per
    # stage, 320 in all: 0.769 / 0.800 / 0.825 on data seeds 0 / 1 / 2 (raw pixels 0.706 / 0.694 / 0.725)
    "minusface": Recipe(
        "minusface",
        [({"stage": 1, "generator_widths": [8, 16], "generator_residual": True}, 0.5), ({"stage": 2}, 0.5)],
        steps=320,
    ),
}
#: measured rows that are not one of the methods' test recipes
VARIANTS: dict[str, Recipe] = {
    # the paper's generator (x' = g(x)) in the other methods' budget: 0.600 on data seed 0 (raw 0.706)
    "minusface_paper": Recipe(
        "minusface", [({"stage": 1, "generator_widths": [8, 16]}, 0.25), ({"stage": 2}, 0.75)]
    ),
}


def _faces(first_label: int, num_ids: int, per_id: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from facesynth.generators.registry import SampleRequest, build_generator, sample_seed

    gen = build_generator("parametric", num_identities=first_label + num_ids, seed=seed)
    requests = [
        SampleRequest(label, i, sample_seed(seed, label, i))
        for label in range(first_label, first_label + num_ids)
        for i in range(per_id)
    ]
    faces = gen.generate(requests)
    return np.stack([f.image for f in faces]), np.stack([f.landmarks for f in faces])


def make_data(folder: Path, seed: int = 0) -> dict[str, Any]:
    """Training shards (with landmarks) and unseen test identities (labels after the training ones)."""
    images, landmarks = _faces(0, TRAIN_IDS, TRAIN_PER_ID, seed)
    rows = [
        ShardRow(
            image=im,
            label=i // TRAIN_PER_ID,
            identity=f"p{i // TRAIN_PER_ID}",
            index=i % TRAIN_PER_ID,
            landmarks=lm,
        )
        for i, (im, lm) in enumerate(zip(images, landmarks, strict=True))
    ]
    write_dataset(folder, [rows], row_group_size=64)
    test_images, test_landmarks = _faces(TRAIN_IDS, TEST_IDS, TEST_PER_ID, seed)
    return {"train": folder, "test_images": test_images, "test_landmarks": test_landmarks}


def _tensor(images: np.ndarray, size: int = SIZE) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


def pair_accuracy(features: np.ndarray, seed: int = 0) -> float:
    """Best-threshold accuracy on the renderer's balanced pairs of the test identities."""
    from facesynth.core.verification_metrics import balanced_pairs, best_threshold_accuracy

    feats = features.reshape(TEST_IDS, TEST_PER_ID, -1)
    feats = feats / (np.linalg.norm(feats, axis=-1, keepdims=True) + 1e-12)
    pairs = balanced_pairs(TEST_IDS, TEST_PER_ID, seed)
    scores = np.einsum("nd,nd->n", feats[pairs[:, 0], pairs[:, 1]], feats[pairs[:, 2], pairs[:, 3]])
    return best_threshold_accuracy(scores, pairs[:, 4].astype(bool))


def raw_pixel_accuracy(data: dict[str, Any]) -> float:
    from facesynth.generators.parametric.difficulty import raw_pixel_features

    return pair_accuracy(raw_pixel_features(data["test_images"]))


def train_and_score(
    name: str, data: dict[str, Any], out: Path, steps: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Train ``name`` (all its stages, ``steps`` in total, default the recipe's) and verify the test
    identities through protect -> recognize (per-face landmarks for DuetFace)."""
    from facesynth.privacy.api import load_privacy_method
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    recipe = VARIANTS[name] if name in VARIANTS else RECIPES[name]
    method_name, stages, steps = recipe.method, recipe.stages, steps or recipe.steps
    start, previous = time.perf_counter(), None
    for stage, (options, fraction) in enumerate(stages):
        opts = {**stages[0][0], **options}  # later stages keep the first stage's network sizes
        if previous is not None:
            opts["client_from" if method_name == "duetface" else "stage1_from"] = str(previous)
        run = out / f"{name}-{stage + 1}"
        train_recognizer(
            RecognizerTrainConfig(
                data=[str(data["train"])],
                output_dir=str(run),
                backbone="tiny",
                input_size=SIZE,
                method=method_name,
                method_kwargs=opts,
                batch_size=32,
                max_steps=max(1, int(round(steps * fraction))),
                lr=0.1,
                margin_scale=16.0,
                num_workers=0,
                progress=False,
                tensorboard=False,
                checkpoint_every=0,
                seed=seed,
                log_every=1000,
            )
        )
        previous = run
    method = load_privacy_method(str(previous))
    images = _tensor(data["test_images"])
    landmarks = torch.from_numpy(data["test_landmarks"]).float() * (SIZE / 112)
    with torch.no_grad():
        payload = method.protect(images, seed=seed, landmarks=landmarks)
        emb = method.recognize(payload).numpy()
    return {"accuracy": pair_accuracy(emb), "seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":  # pragma: no cover - measurement script
    import argparse
    import tempfile

    import facesynth.privacy  # noqa: F401

    parser = argparse.ArgumentParser(description="score the privacy rows against raw pixels (one thread)")
    parser.add_argument(
        "names", nargs="*", choices=[*RECIPES, *VARIANTS], help="default: every method's recipe"
    )
    parser.add_argument("--seed", type=int, default=0, help="data and training seed (the test uses 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "train", seed=args.seed)
        print("raw pixels", round(raw_pixel_accuracy(data), 3), "chance 0.5")
        for name in args.names or list(RECIPES):
            print(name, train_and_score(name, data, Path(tmp), seed=args.seed), flush=True)
