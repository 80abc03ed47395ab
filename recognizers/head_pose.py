"""Head pose (yaw, pitch, roll in degrees) from five face landmarks, by PnP against a mean 3D face.

ID3 conditions on pose; real faces arrive with landmarks from the aligner (insightface detectors give
five, dlib 68 which :func:`five_points` reduces to five) and no pose. ``cv2.solvePnP`` (SQPnP) fits the
rotation that best maps a mean 3D face onto the 2D points; the rotation is then split into the
angles the rest of facesynth uses (those of the parametric renderer and the shard ``attributes``):

* ``yaw > 0``: the face turns towards the image's right (the nose moves right);
* ``pitch > 0``: the face tilts up (features move up);
* ``roll > 0``: the face rotates counter-clockwise as seen in the image.

The 3D model is the ArcFace five-point template for x, y (the mean frontal layout, in template pixels)
plus a depth per point; depth is what turns a shift of the nose into an angle, so the error of the
estimate is mostly the error of the model's depths for that face. Two depth sets (``model=``):

* ``"human"`` (default): nose tip 0.35 and mouth corners 0.0 inter-ocular distances in front of the
  eye centres (our reading of adult anthropometry: nose tip about 22 mm before the pupils at 63 mm
  inter-pupil distance; mouth corners near the eyes' depth);
* ``"parametric"``: the mean geometry of :mod:`facesynth.generators.parametric` (nose 0.52,
  mouth 0.08), whose caricatured nose stands further out than a human one.

The camera is near-orthographic (focal length 20 image widths): aligned and in-the-wild face crops show
little perspective, and the renderer is orthographic. Landmarks from a similarity-aligned crop keep yaw
and pitch but lose roll (alignment removes it); pass the landmarks in the source photo for roll.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.alignment import ARCFACE_TEMPLATE

#: depth in front of the eye centres, in inter-ocular distances: (nose tip, mouth corners)
FACE_MODEL_DEPTHS: dict[str, tuple[float, float]] = {"human": (0.35, 0.0), "parametric": (0.52, 0.08)}
#: focal length in image widths (large: near-orthographic)
FOCAL_WIDTHS = 20.0


def face_model_3d(model: str = "human") -> np.ndarray:
    """(5, 3) mean face in template pixels: x right, y down, z away from the camera (OpenCV frame)."""
    if model not in FACE_MODEL_DEPTHS:
        raise FacesynthError(
            f"head pose: unknown face model {model!r}; choose one of {sorted(FACE_MODEL_DEPTHS)}"
        )
    points = np.asarray(ARCFACE_TEMPLATE, dtype=np.float64).reshape(5, 2)
    points = points - points.mean(axis=0)
    iod = float(np.linalg.norm(points[1] - points[0]))
    nose, mouth = FACE_MODEL_DEPTHS[model]
    depth = -iod * np.array([0.0, 0.0, nose, mouth, mouth])  # towards the camera is -z
    return np.column_stack([points, depth])


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(5, 2) ArcFace-order points from 5 or 68 (iBUG) landmarks."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape == (5, 2):
        return points
    if points.shape == (68, 2):
        return np.stack(
            [points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30], points[48], points[54]]
        )
    raise FacesynthError(f"head pose: landmarks must be (5, 2) or (68, 2), got {tuple(points.shape)}")


def rotation_to_angles(rotation: np.ndarray) -> tuple[float, float, float]:
    """Split R = Rz(roll) Rx(pitch) Ry(yaw) (yaw first, then pitch, then in-plane roll) into degrees."""
    r = np.asarray(rotation, dtype=np.float64)
    pitch = math.asin(max(-1.0, min(1.0, r[2, 1])))
    yaw = math.atan2(-r[2, 0], r[2, 2])
    roll = math.atan2(-r[0, 1], r[1, 1])
    # OpenCV's frame has y down and z away from the camera: flip to facesynth's conventions
    return -math.degrees(yaw), -math.degrees(pitch), -math.degrees(roll)


def estimate_head_pose(landmarks: np.ndarray, model: str = "human") -> dict[str, float]:
    """Yaw, pitch, roll (degrees) of one face from its (5, 2) or (68, 2) landmarks (any pixel frame)."""
    import cv2

    points = five_points(landmarks)
    if not np.isfinite(points).all():
        raise FacesynthError("head pose: landmarks contain NaN or inf")
    width = float(np.ptp(points[:, 0])) or 1.0
    scale = 3.0 * width  # a face about a third of the virtual image
    focal = FOCAL_WIDTHS * scale
    centre = points.mean(axis=0)
    camera = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], dtype=np.float64)
    ok, rvec, _ = cv2.solvePnP(
        face_model_3d(model), points.reshape(5, 1, 2), camera, None, flags=cv2.SOLVEPNP_SQPNP
    )
    if not ok:
        raise FacesynthError("head pose: solvePnP found no pose for these landmarks")
    rotation, _ = cv2.Rodrigues(rvec)
    yaw, pitch, roll = rotation_to_angles(rotation)
    return {"yaw": _clip(yaw), "pitch": _clip(pitch), "roll": _clip(roll)}


def estimate_head_poses(landmarks: Iterable[np.ndarray], model: str = "human") -> np.ndarray:
    """(N, 3) yaw, pitch, roll of many faces."""
    return np.array(
        [[p["yaw"], p["pitch"], p["roll"]] for p in (estimate_head_pose(x, model) for x in landmarks)]
    ).reshape(-1, 3)


def _clip(angle: float) -> float:
    """Into the attribute range [-90, 90] (PnP may return a mirrored solution beyond it)."""
    return float(max(-90.0, min(90.0, angle)))
