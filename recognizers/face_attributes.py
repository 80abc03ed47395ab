"""Pose and age of a detected real face: the ``attributes`` that ingest stores for ID3.

* pose (yaw, pitch, roll): :func:`facesynth.recognizers.head_pose.estimate_head_pose` on the aligner's
  landmarks in the source photo; null when the aligner gives no landmarks (``aligner=none``);
* age: insightface's ``genderage`` ONNX model (e.g. ``genderage.onnx`` from buffalo_l) when the user
  gives its path; otherwise null (facesynth downloads nothing and guesses no ages).

Every value that could not be measured stays null, so the trainer can see how much is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.head_pose import estimate_head_pose


class InsightFaceAge:
    """insightface's genderage model: a face box in an RGB photo -> age in years."""

    def __init__(self, model_path: str | os.PathLike, device: str | None = None):
        from insightface.model_zoo import get_model

        from facesynth.recognizers.encoders import onnx_providers

        path = Path(model_path)
        if not path.is_file():
            raise FacesynthError(f"{path}: age model not found (give insightface's genderage.onnx)")
        model = get_model(str(path), providers=onnx_providers(device))
        if model is None or getattr(model, "taskname", None) != "genderage":
            raise FacesynthError(f"{path}: insightface does not route this model to gender/age estimation")
        model.prepare(-1 if onnx_providers(device) == ["CPUExecutionProvider"] else 0)
        self.model = model

    def age(self, image: np.ndarray, bbox: np.ndarray) -> float:
        from insightface.app.common import Face

        from facesynth.recognizers.alignment import ensure_rgb

        bgr = np.ascontiguousarray(ensure_rgb(image)[:, :, ::-1])
        _, years = self.model.get(bgr, Face(bbox=np.asarray(bbox, dtype=np.float32)))
        return float(min(100.0, max(0.0, years)))


class FaceAttributeEstimator:
    """Measures what it can of (yaw, pitch, roll, age) for one aligned face; the rest stays None."""

    def __init__(
        self, age_model: str | os.PathLike | None = None, pose_model: str = "human", device: Any = None
    ):
        self.age_estimator = InsightFaceAge(age_model, device) if age_model else None
        self.pose_model = pose_model

    def __call__(self, face: Any, image: np.ndarray) -> dict[str, float | None] | None:
        """``face``: an :class:`~facesynth.recognizers.alignment.AlignedFace` found in ``image`` (RGB)."""
        values: dict[str, float | None] = {"yaw": None, "pitch": None, "roll": None, "age": None}
        landmarks = getattr(face, "landmarks", None)
        if landmarks is not None:
            values.update(estimate_head_pose(landmarks, self.pose_model))
        bbox = getattr(face, "bbox", None)
        if self.age_estimator is not None and bbox is not None:
            values["age"] = self.age_estimator.age(image, bbox)
        return None if all(v is None for v in values.values()) else values
