"""Face-verification metrics from pair scores: the one copy every stage uses.

Pure numpy + scikit-learn (no torch), so every layer may use it: the benchmark protocol
(:mod:`facesynth.recognizers.verification`), the dataset-quality report (``data_cards``, which may
import only ``core``), the privacy evaluation and attacks, and the parametric renderer's difficulty
check. Conventions: ``issame`` / ``genuine`` is a boolean per pair; a *similarity* accepts a pair when
it is at or above a threshold, a *distance* when it is below one.

- :func:`kfold_accuracy`: arcface_torch's protocol (``eval/verification.py``): 10 contiguous folds,
  threshold chosen on nine, accuracy measured on the tenth.
- :func:`best_threshold_accuracy`: accuracy at the single best threshold (an optimistic bound, for
  sanity checks such as the renderer's raw-pixel verifier).
- :func:`tar_at_far`: the ROC (``sklearn.metrics.roc_curve``), AUC and the true-accept rate at given
  false-accept rates, flagged when the impostor count cannot resolve the rate.
- :func:`threshold_at_far`: the similarity threshold that lets at most a FAR of impostors through.
- :func:`error_rates`: equal error rate and FNMR at given FMRs (ISO/IEC 19795-1 terms) with thresholds.
- :func:`balanced_pairs`: genuine and impostor pairs from an identities x images grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from facesynth.core.errors import FacesynthError

#: Distance thresholds of arcface_torch's k-fold protocol (squared L2 between unit vectors: 0..4).
DEFAULT_THRESHOLDS = np.arange(0, 4, 0.01)
DEFAULT_FARS = (1e-3, 1e-4)


def _accuracy(distances: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    return float(np.mean((distances < threshold) == issame))


def kfold_accuracy(
    distances: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
    thresholds: np.ndarray = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """k-fold verification accuracy on distances: threshold chosen on k-1 folds, measured on the k-th.

    Folds are contiguous over the pair order (``KFold(shuffle=False)``); the first best threshold wins
    ties. Returns per-fold ``accuracies`` and ``thresholds``, their ``accuracy`` mean and
    ``accuracy_std`` (population std, numpy's default, as arcface_torch reports).
    """
    from sklearn.model_selection import KFold

    distances = np.asarray(distances, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if distances.shape != issame.shape or distances.ndim != 1:
        raise FacesynthError(f"distances {distances.shape} and issame {issame.shape} must be equal 1-D")
    if len(issame) < n_folds:
        raise FacesynthError(f"{len(issame)} pairs cannot be split into {n_folds} folds")
    fold_acc, fold_thr = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(distances):
        train_acc = [_accuracy(distances[train], issame[train], t) for t in thresholds]
        best = float(thresholds[int(np.argmax(train_acc))])
        fold_thr.append(best)
        fold_acc.append(_accuracy(distances[test], issame[test], best))
    return {
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "accuracies": fold_acc,
        "thresholds": fold_thr,
    }


def best_threshold_accuracy(similarities: np.ndarray, issame: np.ndarray) -> float:
    """Accuracy at the best single threshold (``similarity >= t`` means "same"); ties move together."""
    scores = np.asarray(similarities, dtype=np.float64)
    genuine = np.asarray(issame, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    g = genuine[order]
    accepted_genuine = np.concatenate([[0], np.cumsum(g)])
    accepted_impostor = np.concatenate([[0], np.cumsum(~g)])
    s = scores[order]
    cuts = np.concatenate([[True], s[1:] != s[:-1], [True]])  # only cut between distinct scores
    correct = accepted_genuine + (np.count_nonzero(~g) - accepted_impostor)
    return float(correct[cuts].max() / len(g))


def tar_at_far(
    similarities: np.ndarray, issame: np.ndarray, fars: Sequence[float] = DEFAULT_FARS
) -> dict[str, Any]:
    """ROC on similarities: the highest TAR whose FAR is <= each target, the AUC and the curve.

    With N impostor pairs a FAR below 1/N cannot be resolved: such entries are still reported (at zero
    false accepts) with ``resolvable: false``, so a number is never finer than the data allow.
    """
    from sklearn.metrics import auc, roc_curve

    issame = np.asarray(issame, dtype=bool)
    num_pos, num_neg = int(issame.sum()), int((~issame).sum())
    if num_pos == 0 or num_neg == 0:
        raise FacesynthError(f"ROC needs genuine and impostor pairs (got {num_pos} and {num_neg})")
    fpr, tpr, _ = roc_curve(issame, similarities)
    entries = {}
    for far in fars:
        ok = fpr <= far + 1e-12
        entries[f"{far:g}"] = {
            "tar": float(tpr[ok].max()) if ok.any() else 0.0,
            "resolvable": bool(far * num_neg >= 1.0),
        }
    return {
        "tar_at_far": entries,
        "auc": float(auc(fpr, tpr)),
        "num_genuine": num_pos,
        "num_impostor": num_neg,
        "fpr": fpr,
        "tpr": tpr,
    }


def threshold_at_far(impostor_similarities: np.ndarray, far: float) -> float:
    """The smallest threshold t with ``mean(impostor >= t) <= far`` (accepting ``score >= t``)."""
    scores = np.sort(np.asarray(impostor_similarities, dtype=np.float64).ravel())[::-1]
    if scores.size == 0:
        raise FacesynthError("a threshold at a FAR needs impostor scores (at least two identities)")
    allowed = int(math.floor(far * scores.size))
    if allowed >= scores.size:
        return float(scores[-1])
    return float(scores[allowed]) + 1e-12  # just above the (allowed + 1)-th highest impostor score


def error_rates(
    genuine: np.ndarray, impostor: np.ndarray, fmrs: Sequence[float] = (1e-2, 1e-3)
) -> dict[str, Any]:
    """EER and FNMR at each FMR (with thresholds) from genuine and impostor similarity scores.

    An FMR entry is ``resolvable`` when at least ten impostor pairs sit at that rate.
    """
    from sklearn.metrics import roc_curve

    genuine, impostor = np.asarray(genuine), np.asarray(impostor)
    if genuine.size == 0 or impostor.size == 0:
        return {"eer": None, "fnmr_at_fmr": {}}
    y = np.concatenate([np.ones(genuine.size, dtype=np.int8), np.zeros(impostor.size, dtype=np.int8)])
    scores = np.concatenate([genuine, impostor]).astype(np.float64)
    fpr, tpr, thresholds = roc_curve(y, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    # EER: the first ROC point where FNMR <= FMR, interpolated with the point before it
    k = int(np.argmax(fnr <= fpr))
    if k == 0:
        eer, eer_threshold = float((fpr[0] + fnr[0]) / 2), float(thresholds[0])
    else:
        d0, d1 = fnr[k - 1] - fpr[k - 1], fnr[k] - fpr[k]
        w = d0 / (d0 - d1) if d0 != d1 else 0.5
        eer = float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))
        eer_threshold = float(thresholds[k - 1] + w * (thresholds[k] - thresholds[k - 1]))
    rates: dict[str, Any] = {}
    for fmr in fmrs:
        idx = int(np.nonzero(fpr <= fmr)[0][-1])  # the point with the most genuine accepts at FMR <= target
        rates[f"{fmr:g}"] = {
            "fnmr": float(fnr[idx]),
            "threshold": float(thresholds[idx]) if np.isfinite(thresholds[idx]) else None,
            "achieved_fmr": float(fpr[idx]),
            "resolvable": bool(impostor.size * fmr >= 10),
        }
    return {"eer": eer, "eer_threshold": eer_threshold, "fnmr_at_fmr": rates}


def balanced_pairs(num_identities: int, images_per_identity: int, seed: int = 0) -> np.ndarray:
    """Rows ``(identity_a, image_a, identity_b, image_b, genuine)``: each identity's images paired off
    (0-1, 2-3, ...) as genuine pairs, and as many impostor pairs between random distinct identities."""
    if num_identities < 2 or images_per_identity < 2:
        raise FacesynthError("pairs need at least 2 identities with at least 2 images each")
    rng = np.random.default_rng(seed)
    genuine = [
        (k, i, k, i + 1, 1) for k in range(num_identities) for i in range(0, images_per_identity - 1, 2)
    ]
    n = len(genuine)
    a = rng.integers(0, num_identities, n)
    b = (a + rng.integers(1, num_identities, n)) % num_identities
    ia, ib = rng.integers(0, images_per_identity, n), rng.integers(0, images_per_identity, n)
    impostor = [(int(a[j]), int(ia[j]), int(b[j]), int(ib[j]), 0) for j in range(n)]
    return np.array(genuine + impostor, dtype=np.int64)
