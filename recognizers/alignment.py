"""Face alignment onto the ArcFace 5-point template (112x112), with swappable detectors.

An :class:`Aligner` turns an RGB photo (H, W, 3 uint8) into zero or more :class:`AlignedFace`
crops: the similarity transform (rotation, uniform scale, translation) that best maps the five
detected landmarks (left eye, right eye, nose tip, left and right mouth corner, image-left first)
onto :data:`ARCFACE_TEMPLATE` in the least-squares sense (Umeyama's closed form), then an affine
warp with a black border.

Backends: ``none`` (the input is already aligned: checked, optionally centre-cropped and resized),
``insightface`` (an SCRFD/RetinaFace detector ONNX the user has, e.g. ``det_10g.onnx``; nothing is
downloaded) and ``dlib`` (HOG frontal detector + the 68-point predictor from
``face-recognition-models``; 68 points reduce to 5 by eye-contour means, nose tip and mouth corners.
dlib's own 5-point model has no mouth corners, so it cannot be mapped onto this template).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesynth.core.errors import FacesynthError

ALIGNED_SIZE = 112

#: insightface ``face_align.arcface_dst`` for 112x112 crops: left eye, right eye, nose tip, left and
#: right mouth corner (image coordinates, x then y).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


@dataclass
class AlignedFace:
    """One aligned crop; ``landmarks`` are in the source image (None when not detected)."""

    image: np.ndarray
    landmarks: np.ndarray | None
    score: float
    bbox: np.ndarray | None = None

    @property
    def crop_landmarks(self) -> np.ndarray | None:
        """(5, 2) landmarks mapped onto the aligned crop (what shards store), None when not detected."""
        if self.landmarks is None:
            return None
        points = np.asarray(self.landmarks, dtype=np.float64).reshape(5, 2)
        matrix = similarity_transform(points, template(self.image.shape[0]))
        return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the least-squares similarity transform mapping ``src`` points onto ``dst``.

    Umeyama (1991): centre both point sets, take the SVD of their cross-covariance; the rotation is
    U diag(1, d) V^T with d = -1 when a reflection would fit better (reflections are not allowed),
    the scale is trace(S diag(1, d)) / var(src).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = np.mean(np.sum(src_c**2, axis=1))
    if var_src <= 1e-12:
        raise ValueError("source points coincide; no transform")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float(np.sum(s * d) / var_src)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_dst - scale * rotation @ mu_src
    return matrix


def template(size: int = ALIGNED_SIZE) -> np.ndarray:
    """The ArcFace template for a square crop of ``size`` (scaled from 112)."""
    return ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)


def warp_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Crop and align: warp ``image`` so that ``landmarks`` (5, 2) land on the template."""
    import cv2

    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template(size))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def ensure_rgb(image: np.ndarray) -> np.ndarray:
    """Grey (H, W) or (H, W, 1) / RGBA -> (H, W, 3) uint8 RGB."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise FacesynthError(f"expected a uint8 image, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        return np.ascontiguousarray(array[:, :, :3])
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise FacesynthError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")


class Aligner(ABC):
    """RGB photo -> aligned crops, best face first."""

    size: int = ALIGNED_SIZE
    name: str = ""

    @abstractmethod
    def align(self, image: np.ndarray) -> list[AlignedFace]:
        """All faces found (possibly none), sorted by detector score, highest first."""

    def align_largest(self, image: np.ndarray) -> AlignedFace | None:
        """The best face or None (what ingest keeps: one face per identity image)."""
        faces = self.align(image)
        return faces[0] if faces else None


class NoneAligner(Aligner):
    """For pre-aligned data: checks the size; ``mode`` decides what happens to other sizes.

    ``mode="strict"`` rejects anything not ``size x size``; ``"crop"`` (default) centre-crops to a
    square (the shorter side) and resizes, for near-aligned sets such as ORL's 92x112 faces;
    ``"resize"`` resizes without cropping (distorts non-square inputs).
    """

    name = "none"

    def __init__(self, size: int = ALIGNED_SIZE, mode: str = "crop", max_aspect: float = 1.5):
        if mode not in ("strict", "crop", "resize"):
            raise FacesynthError(f"none aligner: mode must be strict, crop or resize, got {mode!r}")
        self.size, self.mode, self.max_aspect = size, mode, max_aspect

    def align(self, image: np.ndarray) -> list[AlignedFace]:
        rgb = ensure_rgb(image)
        h, w = rgb.shape[:2]
        if (h, w) == (self.size, self.size):
            return [AlignedFace(rgb, None, 1.0)]
        import cv2

        if self.mode == "strict":
            raise FacesynthError(
                f"image is {w}x{h}, expected an aligned {self.size}x{self.size} face "
                "(choose an aligner that detects faces, or --none-mode crop)"
            )
        if max(h, w) / min(h, w) > self.max_aspect:
            raise FacesynthError(f"image is {w}x{h}: too far from square to be a pre-aligned face")
        if self.mode == "crop":
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            rgb = rgb[top : top + side, left : left + side]
        interp = cv2.INTER_AREA if min(h, w) > self.size else cv2.INTER_LINEAR
        return [AlignedFace(cv2.resize(rgb, (self.size, self.size), interpolation=interp), None, 1.0)]


class InsightFaceAligner(Aligner):
    """An insightface detector ONNX (SCRFD, e.g. ``det_10g.onnx``) that the user provides."""

    name = "insightface"

    def __init__(
        self,
        model_path: str | os.PathLike,
        det_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        size: int = ALIGNED_SIZE,
        device: str | None = None,
    ):
        from insightface.model_zoo import get_model

        from facesynth.recognizers.encoders import onnx_providers

        path = Path(model_path)
        if not path.is_file():
            raise FacesynthError(
                f"{path}: detector model not found (insightface aligner needs e.g. det_10g.onnx from "
                "buffalo_l; facesynth downloads nothing)"
            )
        model = get_model(str(path), providers=onnx_providers(device))
        if model is None or getattr(model, "taskname", None) != "detection":
            raise FacesynthError(f"{path}: insightface does not route this model to a face detector")
        model.prepare(
            -1 if onnx_providers(device) == ["CPUExecutionProvider"] else 0,
            input_size=det_size,
            det_thresh=det_thresh,
        )
        self.model, self.det_size, self.det_thresh, self.size = model, det_size, det_thresh, size

    def align(self, image: np.ndarray) -> list[AlignedFace]:
        rgb = ensure_rgb(image)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        boxes, kpss = self.model.detect(bgr, input_size=self.det_size)
        if kpss is None:
            raise FacesynthError("this detector gives no landmarks, so faces cannot be aligned")
        order = np.argsort(-boxes[:, 4])
        return [
            AlignedFace(
                warp_face(rgb, kpss[i], self.size),
                kpss[i].astype(np.float32),
                float(boxes[i, 4]),
                boxes[i, :4],
            )
            for i in order
        ]


def _five_from_68(points: np.ndarray) -> np.ndarray:
    """68-point (iBUG) -> 5 ArcFace points: eye-contour means, nose tip (30), mouth corners (48, 54)."""
    return np.stack(
        [points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30], points[48], points[54]]
    )


class DlibAligner(Aligner):
    """dlib HOG frontal face detector + 68-point shape predictor (CPU, offline).

    ``upsample`` is dlib's pyramid up-sampling count (1 finds faces down to ~40 px, slower).
    """

    name = "dlib"

    def __init__(
        self, upsample: int = 1, size: int = ALIGNED_SIZE, predictor: str | os.PathLike | None = None
    ):
        from facesynth.recognizers.encoders import _import_dlib, face_recognition_models_dir

        dlib = _import_dlib()
        path = (
            Path(predictor)
            if predictor
            else face_recognition_models_dir() / "shape_predictor_68_face_landmarks.dat"
        )
        if not path.is_file():
            raise FacesynthError(f"{path}: dlib 68-point landmark model not found")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(path))
        self.upsample, self.size = upsample, size

    def align(self, image: np.ndarray) -> list[AlignedFace]:
        rgb = np.ascontiguousarray(ensure_rgb(image))
        rects, scores, _ = self.detector.run(rgb, self.upsample, 0.0)
        faces = []
        for rect, score in sorted(zip(rects, scores, strict=True), key=lambda rs: -rs[1]):
            shape = self.predictor(rgb, rect)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            five = _five_from_68(points)
            bbox = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32)
            faces.append(
                AlignedFace(warp_face(rgb, five, self.size), five.astype(np.float32), float(score), bbox)
            )
        return faces


def build_aligner(spec: str, device: str | None = None, none_mode: str = "crop") -> Aligner:
    """``none``, ``dlib``, or ``insightface:PATH`` (a detector ONNX such as ``det_10g.onnx``)."""
    kind, _, target = spec.partition(":")
    if kind == "none":
        return NoneAligner(mode=none_mode)
    if kind == "dlib":
        return DlibAligner()
    if kind == "insightface":
        if not target:
            raise FacesynthError("insightface aligner needs a detector path: insightface:/path/det_10g.onnx")
        return InsightFaceAligner(target, device=device)
    raise FacesynthError(f"unknown aligner {spec!r}; use none, dlib or insightface:PATH")
