"""Verification benchmarks of a privacy method through its deployed path, over several query seeds.

Every query image goes through ``protect`` (client) and ``recognize`` (server); for a verification
pair both images are protected independently, and so is the mirrored image of flip-TTA. Randomised
methods (DCTDP's noise, PartialFace's subset/permutation, MinusFace's shuffle) are run once per seed
and reported as mean +- std over the seeds (at least 3); deterministic ones run once.

:func:`bench_privacy` is what ``facesynth bench --privacy`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesynth.core.errors import FacesynthError
from facesynth.privacy.api import PrivacyMethod, load_privacy_method
from facesynth.recognizers.encoders import IdentityEncoder, resize_landmarks

MIN_SEEDS = 3


class PrivacyEncoder(IdentityEncoder):
    """An identity encoder that runs protect -> recognize, drawing per-query randomness from one seed.

    The stream continues across batches, so a whole benchmark is reproducible for a given seed and
    every image gets its own draw. Not differentiable (``protect`` runs without gradients).
    """

    differentiable = False

    def __init__(self, method: PrivacyMethod, seed: int = 0):
        self.method = method.eval()
        self.model = self.method  # evaluate_benchmark switches a training module to eval and back
        self.embedding_dim = int(method.embedding_size)
        self.input_size = method.input_size
        self.description = f"privacy:{method.name}"
        self.seed = int(seed)
        self.payload_bytes = 0
        self.queries = 0
        device = next(method.parameters()).device
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self.seed)

        self._landmarks: torch.Tensor | None = None

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        payload = self.method.protect(images, seed=self._generator, landmarks=self._landmarks)
        self.payload_bytes += payload.nbytes
        self.queries += payload.batch_size
        return self.method.recognize(payload)

    def embed_with_landmarks(
        self, images: torch.Tensor, landmarks: torch.Tensor | None, normalize: bool = True
    ) -> torch.Tensor:
        """:meth:`embed` with per-face landmarks (B, 5, 2) for the client (None: the template).

        Faces larger than the method's input are resized down by :meth:`embed`; their landmarks are
        moved with them, so the ROI follows the face at any input size.
        """
        if landmarks is not None and self._will_resize(images):
            landmarks = resize_landmarks(landmarks, tuple(images.shape[-2:]), self.input_size)
        self._landmarks = landmarks
        try:
            return self.embed(images, normalize=normalize)
        finally:
            self._landmarks = None


def embed_benchmark_with_landmarks(
    encoder: PrivacyEncoder, benchmark: Any, batch_size: int = 64, flip: bool = True
) -> np.ndarray:
    """(2N, D) normalised embeddings as :func:`~facesynth.recognizers.verification.embed_images`
    computes them, each image protected with its own landmarks (mirrored for the flip TTA copy)."""
    from facesynth.recognizers.encoders import images_to_tensor

    out = []
    for start in range(0, len(benchmark), batch_size):
        stop = min(start + batch_size, len(benchmark))
        batch = images_to_tensor(benchmark.load_images(range(start, stop)))
        points = torch.as_tensor(benchmark.landmarks[start:stop], dtype=torch.float32)
        raw = encoder.embed_with_landmarks(batch, points, normalize=False)
        if flip:
            mirrored = points.clone()
            mirrored[..., 0] = (batch.shape[-1] - 1) - mirrored[..., 0]
            raw = raw + encoder.embed_with_landmarks(torch.flip(batch, dims=[3]), mirrored, normalize=False)
        out.append(torch.nn.functional.normalize(raw.float(), dim=1).cpu().numpy())
    embeddings = np.concatenate(out)
    if not np.all(np.isfinite(embeddings)):
        raise FacesynthError(f"{benchmark.name}: the encoder produced non-finite embeddings")
    return embeddings


def _evaluate(encoder: PrivacyEncoder, benchmark: Any, batch_size: int, flip: bool, show_progress: bool):
    """One benchmark through the protected path; per-face landmarks when the method and set have them."""
    from facesynth.recognizers.verification import evaluate_benchmark, evaluate_embeddings

    if not (encoder.method.uses_landmarks and getattr(benchmark, "landmarks", None) is not None):
        return evaluate_benchmark(
            encoder, benchmark, batch_size=batch_size, flip=flip, show_progress=show_progress
        )
    embeddings = embed_benchmark_with_landmarks(encoder, benchmark, batch_size, flip)
    result = evaluate_embeddings(embeddings, benchmark.issame)
    result.update(name=benchmark.name, source=benchmark.origin, num_pairs=benchmark.num_pairs, flip=flip)
    result["landmarks"] = "per face"
    return result


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def evaluate_privacy_method(
    method: PrivacyMethod,
    benchmarks: Sequence[Any],
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 64,
    flip: bool = True,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Run every benchmark once per seed through the protected path; aggregate over seeds.

    Returns ``{"method", "key_id", "randomised", "seeds", "runs": {seed: [result...]},
    "summary": [{"name", "accuracy": {mean, std}, "tar_at_far": {far: {mean, std}}, ...}],
    "payload_bytes_per_query"}``. Randomised methods need at least :data:`MIN_SEEDS` seeds.
    """
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise FacesynthError(f"seeds must be distinct and non-empty, got {seeds}")
    if method.randomised and len(seeds) < MIN_SEEDS:
        raise FacesynthError(
            f"{method.name} draws per-query randomness: give at least {MIN_SEEDS} seeds (got {seeds})"
        )
    if not method.randomised:
        seeds = seeds[:1]
    runs: dict[int, list[dict[str, Any]]] = {}
    bytes_per_query = 0.0
    for seed in seeds:
        encoder = PrivacyEncoder(method, seed)
        runs[seed] = [_evaluate(encoder, b, batch_size, flip, show_progress) for b in benchmarks]
        bytes_per_query = encoder.payload_bytes / max(encoder.queries, 1)
    summary = []
    for i, first in enumerate(runs[seeds[0]]):
        per_seed = [runs[s][i] for s in seeds]
        summary.append(
            {
                "name": first["name"],
                "num_pairs": first["num_pairs"],
                "accuracy": _mean_std([r["accuracy"] for r in per_seed]),
                "fold_std": _mean_std([r["accuracy_std"] for r in per_seed])["mean"],
                "auc": _mean_std([r["auc"] for r in per_seed]),
                "tar_at_far": {
                    far: {
                        **_mean_std([r["tar_at_far"][far]["tar"] for r in per_seed]),
                        "resolvable": all(r["tar_at_far"][far]["resolvable"] for r in per_seed),
                    }
                    for far in first["tar_at_far"]
                },
            }
        )
    return {
        "method": method.name,
        "key_id": method.key_id(),
        "randomised": method.randomised,
        "seeds": seeds,
        "flip": flip,
        "payload_bytes_per_query": bytes_per_query,
        "runs": {str(s): runs[s] for s in seeds},
        "summary": summary,
    }


def privacy_markdown(report: dict[str, Any], model: str = "") -> str:
    """A Markdown table of mean +- std over seeds (accuracy, TAR@FAR, AUC)."""
    rows = report["summary"]
    fars = list(rows[0]["tar_at_far"]) if rows else []
    seeds = report["seeds"]
    lines = [
        f"# Privacy verification report: {report['method']}{' (' + model + ')' if model else ''}",
        "",
        f"Full client -> server path (protect -> recognize), every image protected independently; "
        f"{'mean +- std over query seeds ' + ', '.join(map(str, seeds)) if report['randomised'] else 'deterministic method, one run'}"
        f"; flip-TTA {'on' if report['flip'] else 'off'}. Payload per query: "
        f"{report['payload_bytes_per_query'] / 1024:.1f} KiB (key {report['key_id']}).",
        "",
        "| benchmark | pairs | accuracy (%) | " + " | ".join(f"TAR@FAR={f} (%)" for f in fars) + " | AUC |",
        "|" + "---|" * (4 + len(fars)),
    ]
    for r in rows:
        tars = " | ".join(
            f"{100 * e['mean']:.2f} +- {100 * e['std']:.2f}" + ("" if e["resolvable"] else "*")
            for e in (r["tar_at_far"][f] for f in fars)
        )
        acc = r["accuracy"]
        lines.append(
            f"| {r['name']} | {r['num_pairs']} | {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} | {tars} | "
            f"{r['auc']['mean']:.4f} |"
        )
    lines += ["", "std: across seeds (the 10-fold std within a run is in the JSON as fold_std)."]
    return "\n".join(lines) + "\n"


def resolve_method_path(spec: str) -> str:
    """``torch:RUN`` or ``RUN`` -> the run folder holding ``method_config.json``."""
    spec = str(spec)
    if spec.startswith("torch:"):
        return spec[len("torch:") :]
    kind, sep, _ = spec.partition(":")
    if sep and len(kind) > 1 and not Path(spec).exists():
        raise FacesynthError(f"--privacy needs a trained method folder (torch:RUN or RUN), got {spec!r}")
    return spec


def bench_privacy(
    model: str,
    benchmarks: Sequence[Any],
    out_dir: str | os.PathLike,
    expected_method: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 64,
    flip: bool = True,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Load a trained privacy method, evaluate it over seeds, write ``bench_privacy.json`` / ``.md``."""
    import facesynth.privacy  # noqa: F401  (register every method before loading)
    from facesynth.core.atomic_io import atomic_write, write_json_atomic

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    method = load_privacy_method(resolve_method_path(model), device=device)
    if expected_method not in (None, "", "auto") and method.name != expected_method:
        raise FacesynthError(f"{model}: holds the {method.name!r} method, not {expected_method!r}")
    report = evaluate_privacy_method(method, benchmarks, seeds, batch_size, flip, show_progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slim = {
        **report,
        "runs": {
            s: [{k: v for k, v in r.items() if k not in ("fpr", "tpr")} for r in rs]
            for s, rs in report["runs"].items()
        },
    }
    write_json_atomic(out / "bench_privacy.json", {"model": str(model), **slim})
    with atomic_write(out / "bench_privacy.md", "w") as handle:
        handle.write(privacy_markdown(report, str(model)))
    return {"json": out / "bench_privacy.json", "markdown": out / "bench_privacy.md", "report": report}
