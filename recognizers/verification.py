"""Pair-verification benchmarks with arcface_torch's protocol, plus TAR@FAR, ROC plots and reports.

Protocol (arcface_torch ``eval/verification.py``): embed every image and its horizontal flip, add
the two *raw* embeddings, L2-normalise; distance = squared L2 between normalised embeddings (0..4);
10 contiguous folds over the pair order (``KFold(shuffle=False)``); for each fold the threshold in
``arange(0, 4, 0.01)`` with the best accuracy on the other nine folds (first one on ties) is applied
to the held-out fold; the result is the mean +- std of the ten held-out accuracies.

TAR@FAR comes from ``sklearn.metrics.roc_curve`` on cosine similarity: the highest true-accept rate
whose false-accept rate is <= the target. With N impostor pairs, FARs below 1/N cannot be resolved;
such entries are still reported (at zero false accepts) but flagged ``resolvable: false`` and marked
in the Markdown table, so a number is never silently finer than the data allow. The metrics
themselves live in :mod:`facesynth.core.verification_metrics` (one copy for every stage).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facesynth.core.errors import FacesynthError
from facesynth.core.verification_metrics import DEFAULT_FARS, kfold_accuracy, tar_at_far
from facesynth.recognizers.benchmark_files import VerificationSet

if TYPE_CHECKING:
    from facesynth.recognizers.encoders import IdentityEncoder

logger = logging.getLogger(__name__)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance between rows 2i and 2i+1 of L2-normalised ``embeddings``."""
    a, b = embeddings[0::2], embeddings[1::2]
    return np.sum(np.square(a - b), axis=1)


def embed_images(
    encoder: IdentityEncoder,
    images: VerificationSet,
    batch_size: int = 64,
    flip: bool = True,
    show_progress: bool = False,
) -> np.ndarray:
    """(2N, D) L2-normalised embeddings; with ``flip`` the raw embeddings of image and mirror are summed first."""
    from tqdm.auto import tqdm

    from facesynth.recognizers.encoders import images_to_tensor

    out = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"embed {images.name}", disable=not show_progress, unit="batch"):
        batch = images_to_tensor(images.load_images(range(start, min(start + batch_size, len(images)))))
        with torch.inference_mode():
            raw = encoder.embed(batch, normalize=False)
            if flip:
                raw = raw + encoder.embed(torch.flip(batch, dims=[3]), normalize=False)
            out.append(torch.nn.functional.normalize(raw.float(), dim=1).cpu().numpy())
    embeddings = np.concatenate(out)
    if not np.all(np.isfinite(embeddings)):
        raise FacesynthError(f"{images.name}: the encoder produced non-finite embeddings")
    return embeddings


def evaluate_embeddings(
    embeddings: np.ndarray, issame: np.ndarray, n_folds: int = 10, fars: Sequence[float] = DEFAULT_FARS
) -> dict[str, Any]:
    """Accuracy (10-fold) and TAR@FAR for normalised embeddings of 2N images."""
    distances = pair_distances(embeddings)
    result = kfold_accuracy(distances, issame, n_folds=n_folds)
    result.update(tar_at_far(1.0 - distances / 2.0, issame, fars))
    return result


def evaluate_benchmark(
    encoder: IdentityEncoder,
    benchmark: VerificationSet,
    batch_size: int = 64,
    flip: bool = True,
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Run one benchmark end to end; returns a JSON-able dict (the ROC arrays under ``fpr``/``tpr``)."""
    start = time.perf_counter()
    module = getattr(encoder, "model", None)
    was_training = isinstance(module, torch.nn.Module) and module.training
    if was_training:  # a trainer's live model: evaluate in eval mode, then hand it back as it was
        module.eval()
    try:
        embeddings = embed_images(
            encoder, benchmark, batch_size=batch_size, flip=flip, show_progress=show_progress
        )
    finally:
        if was_training:
            module.train()
    result = evaluate_embeddings(embeddings, benchmark.issame, n_folds=n_folds, fars=fars)
    result.update(
        name=benchmark.name,
        source=benchmark.origin,
        num_pairs=benchmark.num_pairs,
        flip=flip,
        seconds=round(time.perf_counter() - start, 3),
    )
    if benchmark.aligner is not None:
        fallbacks = sorted(benchmark.fallbacks)
        result["no_face_images"] = len(fallbacks)
        result["no_face_pairs"] = len({i // 2 for i in fallbacks})
        if fallbacks:
            logger.warning(
                "%s: %d images had no detected face and were centre-cropped (%d pairs affected)",
                benchmark.name,
                len(fallbacks),
                result["no_face_pairs"],
            )
    logger.info(
        "%s: accuracy %.4f +- %.4f over %d pairs",
        benchmark.name,
        result["accuracy"],
        result["accuracy_std"],
        benchmark.num_pairs,
    )
    return result


def plot_roc(results: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "ROC") -> Path:
    """One ROC curve per benchmark on a log-FAR axis, saved as PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for result in results:
        fpr, tpr = np.asarray(result["fpr"]), np.asarray(result["tpr"])
        floor = 0.5 / max(result["num_impostor"], 1)
        ax.plot(np.maximum(fpr, floor), tpr, label=f"{result['name']} (AUC {result['auc']:.4f})")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("fpr", "tpr")}


def average_row(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy and mean TAR@FAR over benchmarks (a FAR is resolvable only if it is in all)."""
    fars = results[0]["tar_at_far"].keys()
    return {
        "name": "average",
        "accuracy": float(np.mean([r["accuracy"] for r in results])),
        "accuracy_std": float(np.mean([r["accuracy_std"] for r in results])),
        "num_pairs": int(sum(r["num_pairs"] for r in results)),
        "tar_at_far": {
            far: {
                "tar": float(np.mean([r["tar_at_far"][far]["tar"] for r in results])),
                "resolvable": all(r["tar_at_far"][far]["resolvable"] for r in results),
            }
            for far in fars
        },
        "auc": float(np.mean([r["auc"] for r in results])),
    }


def write_report(
    results: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    model: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """``bench.json``, ``bench.md`` (table with an average row) and ``roc.png`` in ``out_dir``."""
    from facesynth.core.atomic_io import atomic_write, write_json_atomic

    if not results:
        raise FacesynthError("no benchmark results to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_summary(r) for r in results]
    avg = average_row(rows)
    write_json_atomic(
        out / "bench.json", {"model": model, **(extra or {}), "benchmarks": rows, "average": avg}
    )
    fars = list(rows[0]["tar_at_far"])
    header = (
        "| benchmark | pairs | accuracy (%) | " + " | ".join(f"TAR@FAR={f} (%)" for f in fars) + " | AUC |"
    )
    lines = [
        f"# Verification report{': ' + model if model else ''}",
        "",
        "Protocol: arcface_torch 10-fold accuracy (flip-TTA embedding sum, L2 norm, squared-L2 "
        "threshold chosen on 9 folds), TAR@FAR from the ROC on cosine similarity.",
        "",
        header,
        "|" + "---|" * (4 + len(fars)),
    ]

    def fmt_tar(entry: dict[str, Any]) -> str:
        return f"{100 * entry['tar']:.2f}" + ("" if entry["resolvable"] else "*")

    for r in [*rows, avg]:
        name = f"**{r['name']}**" if r is avg else r["name"]
        lines.append(
            f"| {name} | {r['num_pairs']} | {100 * r['accuracy']:.2f} +- {100 * r['accuracy_std']:.2f} | "
            + " | ".join(fmt_tar(r["tar_at_far"][f]) for f in fars)
            + f" | {r['auc']:.4f} |"
        )
    for r in rows:
        if r.get("no_face_images"):
            lines += [
                "",
                f"{r['name']}: {r['no_face_images']} images without a detected face were centre-cropped "
                f"({r['no_face_pairs']} of {r['num_pairs']} pairs).",
            ]
    if any(not e["resolvable"] for r in rows for e in r["tar_at_far"].values()):
        lines += [
            "",
            "\\* FAR below 1 / (number of impostor pairs): read at zero false accepts, not resolvable.",
        ]
    with atomic_write(out / "bench.md", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    roc = plot_roc(results, out / "roc.png", title=f"ROC {model}".strip())
    return {"json": out / "bench.json", "markdown": out / "bench.md", "roc": roc}


def format_result(result: dict[str, Any]) -> str:
    """One log line: ``lfw: 99.50 +- 0.30 %  TAR@FAR=0.001 98.10``."""
    tars = "  ".join(
        f"TAR@FAR={far} {100 * e['tar']:.2f}{'' if e['resolvable'] else '*'}"
        for far, e in result["tar_at_far"].items()
    )
    acc = 100 * result["accuracy"]
    std = 100 * result["accuracy_std"]
    return f"{result['name']}: {acc:.2f} +- {std:.2f} %  {tars}" if math.isfinite(acc) else result["name"]
