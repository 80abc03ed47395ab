"""Dataset-quality statistics computed from embedding matrices.

Everything here works on plain arrays: an ``(N, D)`` matrix of image embeddings from an evaluation
face-recognition model, the ``(N,)`` integer class labels and, where known, the per-image conditions
the generator used, per-image attributes and the class centres of a reference set of real
identities. The result is a plain, JSON-serialisable ``dict``.

The definitions follow the papers named below (DCFace, Kim et al., CVPR 2023, for C_intra and greedy
centre uniqueness; ISO/IEC 19795-1 for EER and FNMR at FMR):

* intra-class consistency: cosine of each image to its class centre (the normalised class mean),
  DCFace's C_intra (share of images within cosine distance ``1 - consistency_threshold`` of the centre,
  averaged over classes), cosine to the condition / anchor and the share of "identity flips" below
  ``flip_threshold``;
* inter-class separability: DCFace's greedy class-centre uniqueness, centre-to-centre and image-level
  impostor statistics, the Fisher discriminant ratio, EER and FNMR at FMR 1e-2 / 1e-3;
* intra-class diversity: the spread of unit embeddings around their class mean and attribute spread;
* leakage: the maximum cosine of every synthetic image and class centre to every real class centre.

Scale. All products are blockwise (``block_size`` rows at a time), so the memory next to the
embedding matrix itself stays in the tens of MB. Genuine scores are *all* within-class pairs
(computed class by class with batched matrix products). Image-level impostor scores are all cross-class
pairs when there are at most ``impostor_pairs`` of them, else a seeded uniform sample of
``impostor_pairs`` pairs (drawn as random 256 x 256 row blocks) (all N^2/2 pairs of a 500 000-image dataset would be ~10^14 multiply-adds); centre-level impostor statistics use *all* centre pairs. EER and
FNMR@FMR come from :func:`sklearn.metrics.roc_curve` on all genuine scores (uniformly subsampled to
``max_genuine_for_roc`` when there are more) against the sampled impostor scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from facesynth.core.config import StageConfig
from facesynth.core.verification_metrics import error_rates

ATTRIBUTE_NAMES = ("yaw", "pitch", "roll", "age")
# Bin widths for the attribute entropies: 10 degrees of pose, 10 years of age.
ATTRIBUTE_BIN_WIDTH = {"yaw": 10.0, "pitch": 10.0, "roll": 10.0, "age": 10.0}
HIST_BINS = 200  # score histograms over [-1, 1]
CENTRE_SIM_BINS = 20  # CemiFace-style similarity-to-centre bins over [-1, 1]
IMPOSTOR_BLOCK_SIDE = 256  # sampled impostor pairs come as 256 x 256 blocks of random rows
MAX_BLOCK_ENTRIES = 4_000_000  # similarity entries per block (16 MB of float32)
MAX_LISTED_NAMES = 1000  # flagged identity names listed in a report (the count is always complete)


class QualitySettings(StageConfig):
    """Thresholds and sample sizes of :func:`compute_quality` (all cosines, in [-1, 1]).

    The default thresholds follow DCFace (Kim et al., CVPR 2023: uniqueness and C_intra at
    cosine distance r = 0.3, i.e. cosine 0.7; leakage / flips at cosine 0.3, DCFace's filter). The right
    verification threshold depends on the evaluation encoder, so set ``flip_threshold`` and
    ``leak_threshold`` to your encoder's threshold at the FMR you care about.
    """

    consistency_threshold: float = Field(0.7, ge=-1.0, le=1.0)
    flip_threshold: float = Field(0.3, ge=-1.0, le=1.0)
    uniqueness_threshold: float = Field(0.7, ge=-1.0, le=1.0)
    impostor_threshold: float = Field(0.3, ge=-1.0, le=1.0)
    leak_threshold: float = Field(0.3, ge=-1.0, le=1.0)
    impostor_pairs: int = Field(1_000_000, ge=100)
    max_genuine_for_roc: int = Field(2_000_000, ge=100)
    top_k_leaks: int = Field(10, ge=0)
    block_size: int = Field(4096, ge=16)
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# small helpers


def _unit_rows(x: np.ndarray, block_size: int) -> np.ndarray:
    """Float32, C-contiguous, L2-normalised rows; no copy when ``x`` already is all that."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d embedding matrix, got shape {x.shape}")
    already = x.dtype == np.float32 and x.flags.c_contiguous
    if already:
        ok = True
        for start in range(0, x.shape[0], block_size):
            norms = np.linalg.norm(x[start : start + block_size], axis=1)
            if not np.all(np.abs(norms - 1.0) < 1e-4):
                ok = False
                break
        if ok:
            return x
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], block_size):
        block = np.asarray(x[start : start + block_size], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + block_size] = block / np.maximum(norms, 1e-12)
    return out


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    p5, p25, p50, p75, p95 = np.percentile(values, [5, 25, 50, 75, 95])
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p5": float(p5),
        "p25": float(p25),
        "median": float(p50),
        "p75": float(p75),
        "p95": float(p95),
        "max": float(values.max()),
    }


def _bin_counts(values: np.ndarray, bins: int) -> np.ndarray:
    """Counts of ``values`` in ``bins`` equal bins over [-1, 1] (values outside go to the end bins)."""
    index = ((np.asarray(values, dtype=np.float64) + 1.0) * (bins / 2.0)).astype(np.int64)
    np.clip(index, 0, bins - 1, out=index)
    return np.bincount(index, minlength=bins)


def _histogram(values: np.ndarray, bins: int = HIST_BINS) -> dict[str, list]:
    edges = np.linspace(-1.0, 1.0, bins + 1)
    return {"edges": [round(float(e), 6) for e in edges], "counts": _bin_counts(values, bins).tolist()}


class _Moments:
    """Streaming count / mean / std / max / count-above / histogram of scores seen block by block."""

    def __init__(self, threshold: float, bins: int = HIST_BINS, histogram: bool = True) -> None:
        self.threshold = threshold
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.max = -math.inf
        self.above = 0
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.int64) if histogram else None

    def add(self, scores: np.ndarray) -> None:
        if scores.size == 0:
            return
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        self.count += s.size
        self.total += float(s.sum())
        self.total_sq += float(np.dot(s, s))
        self.max = max(self.max, float(s.max()))
        self.above += int(np.count_nonzero(s > self.threshold))
        if self.hist is not None:
            self.hist += _bin_counts(s, self.bins)

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0}
        mean = self.total / self.count
        var = max(self.total_sq / self.count - mean * mean, 0.0)
        edges = np.linspace(-1.0, 1.0, self.bins + 1)
        return {
            "count": int(self.count),
            "mean": mean,
            "std": math.sqrt(var),
            "max": self.max,
            "threshold": self.threshold,
            "above_threshold": int(self.above),
            "share_above_threshold": self.above / self.count,
            **(
                {"histogram": {"edges": [round(float(e), 6) for e in edges], "counts": self.hist.tolist()}}
                if self.hist is not None
                else {}
            ),
        }


# --------------------------------------------------------------------------------------------------
# building blocks (public: each is usable and tested on its own)


def encode_labels(labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary integer labels to 0..C-1; returns (codes, the original label of each code)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
    classes, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), classes


def class_centres(
    embeddings: np.ndarray, codes: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised class means (C, D) and the norm of each unnormalised mean of unit embeddings.

    The mean norm m_c says how tight a class is: for unit vectors the total variance around the mean
    is ``1 - m_c^2`` (0 for identical images).
    """
    from scipy import sparse

    n = embeddings.shape[0]
    counts = np.bincount(codes, minlength=num_classes).astype(np.float64)
    indicator = sparse.csr_matrix(
        (np.ones(n, dtype=np.float32), (codes, np.arange(n))), shape=(num_classes, n)
    )
    sums = np.asarray(indicator @ embeddings, dtype=np.float64)
    means = sums / np.maximum(counts, 1.0)[:, None]
    norms = np.linalg.norm(means, axis=1)
    centres = (means / np.maximum(norms, 1e-12)[:, None]).astype(np.float32)
    return centres, norms


def rowwise_cosine(a: np.ndarray, b: np.ndarray, index_b: np.ndarray | None, block_size: int) -> np.ndarray:
    """cos(a_i, b_{index_b[i]}) (or cos(a_i, b_i)) for unit rows, in blocks."""
    out = np.empty(a.shape[0], dtype=np.float32)
    for start in range(0, a.shape[0], block_size):
        stop = start + block_size
        rows_b = b[start:stop] if index_b is None else b[index_b[start:stop]]
        out[start:stop] = np.einsum("ij,ij->i", a[start:stop], rows_b)
    return out


def genuine_scores(embeddings: np.ndarray, codes: np.ndarray, max_entries: int = 4_000_000) -> np.ndarray:
    """Cosines of all within-class image pairs (i < j), by batched products of padded class blocks."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    by_size = np.argsort(counts, kind="stable")  # similar sizes share a batch: little padding
    by_size = by_size[counts[by_size] >= 2]
    dim = embeddings.shape[1]
    parts: list[np.ndarray] = []
    i = 0
    while i < by_size.size:
        # grow the batch while the padded product stays small
        j = i
        while j < by_size.size:
            width = int(counts[by_size[j]])
            if (j - i + 1) * width * max(width, dim) > max_entries and j > i:
                break
            j += 1
        batch = by_size[i:j]
        width = int(counts[batch[-1]])
        padded = np.zeros((batch.size, width, dim), dtype=np.float32)
        valid = np.zeros((batch.size, width), dtype=bool)
        for row, cls in enumerate(batch):
            n = counts[cls]
            padded[row, :n] = embeddings[order[starts[cls] : starts[cls] + n]]
            valid[row, :n] = True
        grams = np.matmul(padded, padded.transpose(0, 2, 1))
        iu, ju = np.triu_indices(width, k=1)
        keep = valid[:, iu] & valid[:, ju]
        parts.append(grams[:, iu, ju][keep])
        i = j
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def impostor_scores(
    embeddings: np.ndarray, codes: np.ndarray, num_pairs: int, seed: int, block_size: int
) -> tuple[np.ndarray, bool]:
    """Cross-class image-pair cosines: all of them when there are at most ``num_pairs``, else
    ``num_pairs`` uniformly drawn pairs (seeded, with replacement, drawn as all cross-class pairs of
    random 256 x 256 row blocks). Returns (scores, sampled)."""
    n = embeddings.shape[0]
    counts = np.bincount(codes)
    if np.count_nonzero(counts) < 2:
        return np.zeros(0, dtype=np.float32), False
    total = (n * n - int(np.square(counts.astype(np.int64)).sum())) // 2
    if total <= num_pairs:
        parts = []
        rows_per_block = max(1, min(block_size, MAX_BLOCK_ENTRIES // n))
        for start in range(0, n, rows_per_block):
            stop = min(start + rows_per_block, n)
            sims = embeddings[start:stop] @ embeddings.T
            rows = np.arange(start, stop)
            mask = (np.arange(n)[None, :] > rows[:, None]) & (codes[None, :] != codes[start:stop, None])
            parts.append(sims[mask])
        return np.concatenate(parts), False
    # Sample as random row blocks: all cross-class pairs between two random sets of ``side`` rows.
    # Every cross-class pair is equally likely, and one small matrix product replaces thousands of
    # scattered row gathers.
    rng = np.random.default_rng(seed)
    side = IMPOSTOR_BLOCK_SIDE
    out = np.empty(num_pairs, dtype=np.float32)
    filled = 0
    while filled < num_pairs:
        a = rng.integers(0, n, size=side)
        b = rng.integers(0, n, size=side)
        sims = embeddings[a] @ embeddings[b].T
        scores = sims[codes[a][:, None] != codes[b][None, :]]
        take = min(scores.size, num_pairs - filled)
        out[filled : filled + take] = scores[:take]
        filled += take
    return out, True


def pairwise_stats(
    a: np.ndarray, b: np.ndarray | None, threshold: float, block_size: int, histogram: bool = True
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Statistics of all cosines between rows of ``a`` and ``b`` (or all pairs i < j of ``a``).

    Returns the summary, and per row of ``a`` the maximum cosine and its argmax in ``b`` (for
    ``b is None``: over all other rows of ``a``).
    """
    other = a if b is None else b
    moments = _Moments(threshold, histogram=histogram)
    row_max = np.full(a.shape[0], -np.inf, dtype=np.float32)
    row_arg = np.zeros(a.shape[0], dtype=np.int64)
    rows_per_block = max(1, min(block_size, MAX_BLOCK_ENTRIES // max(other.shape[0], 1)))
    for start in range(0, a.shape[0], rows_per_block):
        stop = min(start + rows_per_block, a.shape[0])
        sims = a[start:stop] @ other.T
        if b is None:
            rows = np.arange(start, stop)
            sims[rows - start, rows] = -np.inf  # never match a row to itself
            # count each unordered pair once: the part of this block's rows right of the diagonal
            cols = np.arange(other.shape[0])
            upper = cols[None, :] > rows[:, None]
            moments.add(sims[upper])
        else:
            moments.add(sims.reshape(-1))
        arg = np.argmax(sims, axis=1)
        row_arg[start:stop] = arg
        row_max[start:stop] = sims[np.arange(stop - start), arg]
    return moments.result(), row_max, row_arg


def greedy_uniqueness(centres: np.ndarray, threshold: float, block_size: int = 1024) -> np.ndarray:
    """DCFace's U_class: walk the centres in order, accept one whose cosine to every accepted centre is
    at most ``threshold``; returns the boolean "accepted" mask. Blockwise: a block is first checked
    against all earlier accepted centres with one product, then resolved in order within the block."""
    c = centres.shape[0]
    accepted = np.zeros(c, dtype=bool)
    kept: list[np.ndarray] = []
    for start in range(0, c, block_size):
        stop = min(start + block_size, c)
        block = centres[start:stop]
        ok = np.ones(stop - start, dtype=bool)
        if kept:
            previous = np.concatenate(kept)
            ok &= (block @ previous.T).max(axis=1) <= threshold
        gram = block @ block.T
        block_accept = np.zeros(stop - start, dtype=bool)
        for i in range(stop - start):
            if ok[i] and not np.any(gram[i, :i][block_accept[:i]] > threshold):
                block_accept[i] = True
        accepted[start:stop] = block_accept
        kept.append(block[block_accept])
    return accepted


def fisher_discriminant_ratio(genuine: np.ndarray, impostor: np.ndarray) -> float | None:
    """FDR = (mean_gen - mean_imp)^2 / (var_gen + var_imp); None without both kinds of scores."""
    if genuine.size == 0 or impostor.size == 0:
        return None
    g, i = genuine.astype(np.float64), impostor.astype(np.float64)
    denom = g.var() + i.var()
    diff = (g.mean() - i.mean()) ** 2
    return float(diff / denom) if denom > 0 else (math.inf if diff > 0 else 0.0)


def attribute_spread(attributes: np.ndarray, codes: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per attribute (yaw, pitch, roll, age; NaN = unknown): overall spread, mean within-class std and
    the entropy (bits) of a fixed-width binning."""
    result: dict[str, Any] = {}
    attributes = np.asarray(attributes, dtype=np.float64)
    for col, name in enumerate(ATTRIBUTE_NAMES[: attributes.shape[1]]):
        values = attributes[:, col]
        known = np.isfinite(values)
        if not known.any():
            continue
        v, c = values[known], codes[known]
        counts = np.bincount(c, minlength=num_classes).astype(np.float64)
        sums = np.bincount(c, weights=v, minlength=num_classes)
        sq = np.bincount(c, weights=v * v, minlength=num_classes)
        has = counts >= 2
        within = np.sqrt(np.maximum(sq[has] / counts[has] - (sums[has] / counts[has]) ** 2, 0.0))
        width = ATTRIBUTE_BIN_WIDTH[name]
        _, bin_counts = np.unique(np.floor(v / width), return_counts=True)
        p = bin_counts / bin_counts.sum()
        result[name] = {
            "known": int(known.sum()),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "max": float(v.max()),
            "mean_within_class_std": float(within.mean()) if within.size else None,
            "entropy_bits": float(-(p * np.log2(p)).sum()),
            "bin_width": width,
        }
    return result


def leakage(
    embeddings: np.ndarray,
    codes: np.ndarray,
    centres: np.ndarray,
    reference_centres: np.ndarray,
    threshold: float,
    top_k: int,
    block_size: int,
    class_names: Sequence[str] | None = None,
    reference_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Max cosine of every synthetic image and class centre to every real class centre.

    An identity is flagged when its centre or any of its images exceeds ``threshold`` (image-to-centre
    comparison finds leaks that centre-to-centre comparison misses, Vec2Face #16).
    """
    num_classes = centres.shape[0]
    ref = _unit_rows(reference_centres, block_size)
    img_stats, img_max, img_arg = pairwise_stats(embeddings, ref, threshold, block_size, histogram=False)
    cen_stats, cen_max, cen_arg = pairwise_stats(centres, ref, threshold, block_size, histogram=False)
    # per class: the worst image
    worst_img = np.full(num_classes, -np.inf, dtype=np.float32)
    np.maximum.at(worst_img, codes, img_max)
    flagged_images = img_max > threshold
    class_has_flagged_image = np.bincount(codes[flagged_images], minlength=num_classes) > 0
    flagged_centre = cen_max > threshold
    flagged = flagged_centre | class_has_flagged_image
    # the real identity matched by the worst image of each class
    worst_idx = np.full(num_classes, -1, dtype=np.int64)
    order = np.lexsort((img_max, codes))  # by class, then by score: the last of each class is its max
    last = np.r_[np.nonzero(np.diff(codes[order]))[0], order.size - 1]
    worst_idx[codes[order[last]]] = order[last]
    score = np.maximum(worst_img, cen_max)
    top = np.argsort(-score, kind="stable")[:top_k]

    def cname(i: int) -> str:
        return str(class_names[i]) if class_names is not None else str(i)

    def rname(i: int) -> str:
        return str(reference_names[i]) if reference_names is not None else str(i)

    matches = []
    for cls in top:
        img = int(worst_idx[cls])
        matches.append(
            {
                "identity": cname(int(cls)),
                "centre_cos": float(cen_max[cls]),
                "centre_match": rname(int(cen_arg[cls])),
                "max_image_cos": float(worst_img[cls]),
                "image_match": rname(int(img_arg[img])) if img >= 0 else None,
                "flagged": bool(flagged[cls]),
            }
        )
    return {
        "threshold": threshold,
        "reference_identities": int(ref.shape[0]),
        "image_to_real_centre": img_stats,
        "centre_to_real_centre": cen_stats,
        "flagged_images": int(flagged_images.sum()),
        "flagged_images_rate": float(flagged_images.mean()) if flagged_images.size else 0.0,
        "flagged_identities_by_centre": int(flagged_centre.sum()),
        "flagged_identities_by_image": int(class_has_flagged_image.sum()),
        "flagged_identities": int(flagged.sum()),
        "flagged_identities_rate": float(flagged.mean()) if flagged.size else 0.0,
        "flagged_identity_names": [cname(int(i)) for i in np.nonzero(flagged)[0][:MAX_LISTED_NAMES]],
        "top_matches": matches,
    }


# --------------------------------------------------------------------------------------------------
# the whole report


def compute_quality(
    embeddings: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    conditions: np.ndarray | None = None,
    anchors: np.ndarray | None = None,
    attributes: np.ndarray | None = None,
    anchor_cos: np.ndarray | None = None,
    id_cos: np.ndarray | None = None,
    reference_centres: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    reference_names: Sequence[str] | None = None,
    settings: QualitySettings | None = None,
) -> dict[str, Any]:
    """All quality statistics of one dataset.

    Args:
        embeddings: (N, D) evaluation-encoder embeddings of the images (normalised here if needed).
        labels: (N,) integer class of each image (any integers; classes are their sorted unique values).
        conditions: optional (N, D) condition y_ij each image was generated from; gives cos(f(x), y).
        anchors: optional (C, D) identity anchor w_i per class, in sorted-label order; gives
            cos(f(x), w) and the packing (pairwise angles) of the anchors.
        attributes: optional (N, 4) yaw, pitch, roll, age (NaN = unknown).
        anchor_cos / id_cos: optional (N,) requested / realised cosines stored by the generator.
        reference_centres: optional (M, D) class centres of real identities, for the leakage check.
        class_names / reference_names: display names for classes (sorted-label order) / real centres.
    """
    s = settings or QualitySettings()
    bs = s.block_size
    codes, classes = encode_labels(labels)
    emb = _unit_rows(embeddings, bs)
    if emb.shape[0] != codes.size:
        raise ValueError(f"{emb.shape[0]} embeddings but {codes.size} labels")
    n, dim = emb.shape
    num_classes = classes.size
    counts = np.bincount(codes, minlength=num_classes)
    centres, mean_norms = class_centres(emb, codes, num_classes)

    # ---- intra-class consistency
    to_centre = rowwise_cosine(emb, centres, codes, bs)
    within = to_centre >= s.consistency_threshold
    c_intra = float((np.bincount(codes, weights=within, minlength=num_classes) / counts).mean())
    intra: dict[str, Any] = {
        "cos_to_centre": _summary(to_centre),
        "consistency_threshold": s.consistency_threshold,
        "c_intra": c_intra,
        "centre_similarity_bins": _histogram(to_centre, CENTRE_SIM_BINS),
    }
    flip_source = "class centre"
    flip_scores = to_centre
    if conditions is not None:
        cond = _unit_rows(conditions, bs)
        to_condition = rowwise_cosine(emb, cond, None, bs)
        intra["cos_to_condition"] = _summary(to_condition)
        flip_source, flip_scores = "condition", to_condition
    if anchors is not None:
        anc = _unit_rows(anchors, bs)
        if anc.shape[0] != num_classes:
            raise ValueError(f"{anc.shape[0]} anchors but {num_classes} classes")
        to_anchor = rowwise_cosine(emb, anc, codes, bs)
        intra["cos_to_anchor"] = _summary(to_anchor)
        flip_source, flip_scores = "anchor", to_anchor
    flips = flip_scores < s.flip_threshold
    intra["identity_flips"] = {
        "measured_against": flip_source,
        "threshold": s.flip_threshold,
        "count": int(flips.sum()),
        "share": float(flips.mean()),
        "identities_with_flips": int((np.bincount(codes[flips], minlength=num_classes) > 0).sum()),
    }
    for name, column in (("requested_anchor_cos", anchor_cos), ("stored_id_cos", id_cos)):
        if column is not None:
            values = np.asarray(column, dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                intra[name] = _summary(values)
    genuine = genuine_scores(emb, codes)
    intra["genuine"] = _summary(genuine)

    # ---- inter-class separability
    unique = greedy_uniqueness(centres, s.uniqueness_threshold)
    centre_stats, nearest, _ = pairwise_stats(centres, None, s.impostor_threshold, bs)
    impostor, sampled = impostor_scores(emb, codes, s.impostor_pairs, s.seed, bs)
    imp_moments = _Moments(s.impostor_threshold)
    imp_moments.add(impostor)
    rng = np.random.default_rng(s.seed + 1)
    genuine_roc = (
        genuine if genuine.size <= s.max_genuine_for_roc else rng.choice(genuine, s.max_genuine_for_roc)
    )
    gen_hist = _histogram(genuine)
    inter: dict[str, Any] = {
        "uniqueness": {
            "threshold": s.uniqueness_threshold,
            "unique": int(unique.sum()),
            "share": float(unique.mean()) if unique.size else 0.0,
        },
        "centre_impostor": centre_stats,
        "nearest_other_centre": _summary(nearest[np.isfinite(nearest)]),
        "image_impostor_sampled": {**imp_moments.result(), "sampled": sampled},
        "fisher_discriminant_ratio": fisher_discriminant_ratio(genuine, impostor),
        **error_rates(genuine_roc, impostor),
        "genuine_histogram": gen_hist,
    }
    if anchors is not None and num_classes >= 2:
        packing, anc_nearest, _ = pairwise_stats(anc, None, s.uniqueness_threshold, bs)
        max_cos = float(np.clip(packing["max"], -1.0, 1.0))
        inter["anchor_packing"] = {
            "min_angle_deg": math.degrees(math.acos(max_cos)),
            "mean_angle_deg": math.degrees(math.acos(float(np.clip(packing["mean"], -1.0, 1.0)))),
            "mean_nearest_angle_deg": float(np.degrees(np.arccos(np.clip(anc_nearest, -1.0, 1.0))).mean()),
        }

    # ---- intra-class diversity
    spread = 1.0 - mean_norms[counts >= 2] ** 2
    diversity: dict[str, Any] = {
        "embedding_spread": {
            "definition": "per class 1 - |mean of unit embeddings|^2 (total variance around the mean)",
            **_summary(spread),
        },
        "mean_cos_distance_to_centre": float(1.0 - to_centre.mean()),
        "mean_genuine_cos_distance": float(1.0 - genuine.mean()) if genuine.size else None,
    }
    if attributes is not None:
        diversity["attributes"] = attribute_spread(np.asarray(attributes), codes, num_classes)

    report: dict[str, Any] = {
        "counts": {
            "images": int(n),
            "identities": int(num_classes),
            "embedding_dim": int(dim),
            "images_per_identity": {
                "min": int(counts.min()),
                "mean": float(counts.mean()),
                "max": int(counts.max()),
            },
        },
        "settings": s.to_json_dict(),
        "intra_class": intra,
        "inter_class": inter,
        "diversity": diversity,
        "leakage": None,
    }
    if reference_centres is not None:
        names = list(class_names) if class_names is not None else [str(c) for c in classes]
        report["leakage"] = leakage(
            emb,
            codes,
            centres,
            reference_centres,
            s.leak_threshold,
            s.top_k_leaks,
            bs,
            names,
            reference_names,
        )
    return report
