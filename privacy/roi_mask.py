"""Facial region-of-interest (ROI) masks from landmarks, for DuetFace's interactive masking.

TFace's DuetFace runs PFLD (98 WFLW landmarks) on every image, takes the convex hull, and rasterises
it to a binary 112 x 112 mask (``recognition/tasks/duetface/duetface_model.py``). PFLD weights are not distributed with TFace
(issue #88) and were trained on WFLW crops rather than ArcFace-aligned faces, so facesynth uses its
own landmarks instead: the 5-point landmarks its aligner returns, or those the parametric renderer
reports for a rendered image, or, for already-aligned data without landmarks, the ArcFace 5-point
template itself (every aligned face has its landmarks on the template by construction).

Five points (eyes, nose tip, mouth corners) span only the inner face, so the hull is scaled about
its centroid (``expand``, default 1.8, with extra ``top_extra`` upwards for the forehead). These
factors are a documented, unverified choice that roughly matches the area a 98-point jaw+brow hull
covers on an aligned face; set ``expand=1`` for the bare hull.
"""

from __future__ import annotations

import numpy as np
import torch

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.alignment import template as arcface_template


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise hull vertices of 2-D points (Andrew's monotone chain)."""
    pts = sorted({(float(x), float(y)) for x, y in np.asarray(points, dtype=np.float64)})
    if len(pts) < 3:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _expand(points: np.ndarray, expand: float, top_extra: float) -> np.ndarray:
    centre = points.mean(axis=0)
    out = centre + (points - centre) * float(expand)
    if top_extra:
        # push points above the centroid further up (forehead), proportional to their height
        above = out[:, 1] < centre[1]
        out[above, 1] -= float(top_extra) * (centre[1] - out[above, 1])
    return out


def polygon_mask(vertices: np.ndarray, size: int = 112) -> np.ndarray:
    """Binary (size, size) mask of the pixels whose centres lie inside a convex CCW polygon."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    inside = np.ones((size, size), dtype=bool)
    n = len(vertices)
    if n < 3:
        return np.zeros((size, size), dtype=bool)
    # vertices are CCW in (x, y) with y pointing down, so "inside" is a consistent sign of the cross product
    signs = []
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        signs.append((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0))
    positive = np.all(np.stack(signs) >= 0, axis=0)
    negative = np.all(np.stack(signs) <= 0, axis=0)
    inside &= positive | negative
    return inside


def roi_mask_from_landmarks(
    landmarks: np.ndarray | torch.Tensor | None,
    batch_size: int | None = None,
    size: int = 112,
    expand: float = 1.8,
    top_extra: float = 0.6,
) -> torch.Tensor:
    """Float (B, 1, size, size) masks in {0, 1}: the expanded convex hull of each face's landmarks.

    ``landmarks`` is (B, K, 2) or (K, 2) pixel (x, y) coordinates in the ``size`` x ``size`` crop
    (K >= 3). ``None`` means aligned faces without landmarks: the ArcFace template is used for all
    ``batch_size`` faces; so is it for a face whose points are all NaN (unknown in its shard).
    """
    if landmarks is None:
        if batch_size is None:
            raise FacesynthError("roi_mask_from_landmarks: give landmarks or a batch_size for the template")
        template = arcface_template(size)
        landmarks = np.broadcast_to(template, (int(batch_size), *template.shape))
    array = landmarks.detach().cpu().numpy() if isinstance(landmarks, torch.Tensor) else np.asarray(landmarks)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] != 2 or array.shape[1] < 3:
        raise FacesynthError(f"landmarks must have shape (B, K>=3, 2) in pixels, got {tuple(array.shape)}")
    unknown = np.all(np.isnan(array), axis=(1, 2))
    if unknown.any():
        array = array.copy()
        array[unknown] = arcface_template(size)[: array.shape[1]] if array.shape[1] <= 5 else np.nan
    if not np.all(np.isfinite(array)):
        raise FacesynthError(
            "landmarks contain NaN or infinite coordinates (a face is either all-NaN or finite)"
        )
    cache: dict[bytes, np.ndarray] = {}
    masks = np.zeros((array.shape[0], 1, size, size), dtype=np.float32)
    for i, points in enumerate(array):
        key = points.tobytes()
        if key not in cache:
            cache[key] = polygon_mask(convex_hull(_expand(points, expand, top_extra)), size)
        masks[i, 0] = cache[key]
    return torch.from_numpy(masks)
