"""Alignment: the similarity fit, the warp onto the ArcFace template, the none aligner, dlib on CelebA."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.alignment import (
    ARCFACE_TEMPLATE,
    NoneAligner,
    build_aligner,
    similarity_transform,
    warp_face,
)


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, np.array(shift)[:, None]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@pytest.mark.parametrize(
    ("angle", "scale", "shift"), [(0, 1, (0, 0)), (17, 2.5, (140, 60)), (-40, 0.7, (-5, 30))]
)
def test_similarity_transform_recovers_exact_transform(angle, scale, shift):
    truth = _similarity(angle, scale, shift)
    photo_points = _apply(truth, ARCFACE_TEMPLATE)
    estimate = similarity_transform(photo_points, ARCFACE_TEMPLATE)  # photo -> template = inverse of truth
    np.testing.assert_allclose(_apply(estimate, photo_points), ARCFACE_TEMPLATE, atol=1e-9)
    inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(estimate, inverse, atol=1e-9)


def test_similarity_transform_least_squares_and_no_reflection():
    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE + rng.normal(0, 1.5, ARCFACE_TEMPLATE.shape)
    matrix = similarity_transform(src, ARCFACE_TEMPLATE)
    residual = np.sum((_apply(matrix, src) - ARCFACE_TEMPLATE) ** 2)
    # no perturbation of the fitted similarity does better (it is the least-squares optimum)
    for delta in np.eye(6) * 1e-3:
        a, b, tx, ty = matrix[0, 0], matrix[1, 0], matrix[0, 2], matrix[1, 2]
        a, b, tx, ty = a + delta[0], b + delta[1], tx + delta[2], ty + delta[3]
        other = np.array([[a, -b, tx], [b, a, ty]])
        assert np.sum((_apply(other, src) - ARCFACE_TEMPLATE) ** 2) >= residual
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])  # a mirror image of the template
    fitted = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(fitted[:, :2]) > 0


def test_warp_puts_landmarks_on_template():
    # a rotated, scaled face in a large photo: one bright dot per landmark, one photo per landmark
    truth = _similarity(25, 2.0, (150, 40))
    points = _apply(truth, ARCFACE_TEMPLATE)
    yy, xx = np.mgrid[0:400, 0:420]
    for (x, y), (tx, ty) in zip(points, ARCFACE_TEMPLATE, strict=True):
        photo = np.zeros((400, 420, 3), dtype=np.uint8)
        photo[(xx - x) ** 2 + (yy - y) ** 2 <= 16] = 255
        crop = warp_face(photo, points)
        assert crop.shape == (112, 112, 3)
        weight = crop[:, :, 1].astype(np.float64)
        gy, gx = np.mgrid[0:112, 0:112]
        cx, cy = (weight * gx).sum() / weight.sum(), (weight * gy).sum() / weight.sum()
        # cv2 samples pixel centres at integer coordinates, like the landmark coordinates
        assert abs(cx - tx) < 0.5 and abs(cy - ty) < 0.5


def test_none_aligner_sizes():
    aligned = np.full((112, 112, 3), 7, np.uint8)
    assert NoneAligner().align(aligned)[0].image is aligned
    grey_orl = np.tile(np.arange(92, dtype=np.uint8), (112, 1))  # 92 wide, 112 high, grey
    face = NoneAligner(mode="crop").align_largest(grey_orl)
    assert face.image.shape == (112, 112, 3) and face.landmarks is None
    with pytest.raises(FacesynthError, match="92x112, expected an aligned 112x112"):
        NoneAligner(mode="strict").align(grey_orl)
    with pytest.raises(FacesynthError, match="too far from square"):
        NoneAligner().align(np.zeros((112, 300, 3), np.uint8))
    with pytest.raises(FacesynthError, match="unknown aligner"):
        build_aligner("mtcnn")
    with pytest.raises(FacesynthError, match="detector model not found"):
        build_aligner("insightface:/no/det_10g.onnx")


def _scrfd_layout_onnx(path, kps: np.ndarray, box, score: float = 0.9, size: int = 640) -> None:
    """A stand-in for an insightface SCRFD detector file: the same 9-output layout (strides 8/16/32,
    2 anchors each, scores / box distances / keypoint offsets in stride units) with one fixed face on
    the stride-32 anchor at the image centre. The real models are not shipped and are not downloaded."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cx = cy = size // 2
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    arrays = {}
    for stride in (8, 16, 32):
        n = (size // stride) ** 2 * 2
        scores, boxes, points = (
            np.zeros((n, 1), np.float32),
            np.zeros((n, 4), np.float32),
            np.zeros((n, 10), np.float32),
        )
        if stride == 32:
            i = ((cy // stride) * (size // stride) + cx // stride) * 2
            scores[i, 0] = score
            boxes[i] = [
                (cx - box[0]) / stride,
                (cy - box[1]) / stride,
                (box[2] - cx) / stride,
                (box[3] - cy) / stride,
            ]
            points[i] = ((kps - [cx, cy]) / stride).reshape(-1)
        arrays[stride] = (scores, boxes, points)
    outputs = []
    for kind in range(3):
        for stride in (8, 16, 32):
            name = f"out{kind}_{stride}"
            inits.append(numpy_helper.from_array(arrays[stride][kind], name + "_c"))
            nodes.append(helper.make_node("Add", [name + "_c", "nothing"], [name]))
            outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arrays[stride][kind].shape))
            )
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])
    model = helper.make_model(
        helper.make_graph(nodes, "scrfd_layout", [image], outputs, inits),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def test_insightface_aligner_plumbing(tmp_path):
    from facesynth.recognizers.alignment import InsightFaceAligner

    kps = np.array([[290, 300], [350, 300], [320, 340], [295, 370], [345, 370]], dtype=np.float64)
    _scrfd_layout_onnx(tmp_path / "det.onnx", kps, (260, 240, 380, 400))
    aligner = build_aligner(f"insightface:{tmp_path / 'det.onnx'}", device="cpu")
    assert isinstance(aligner, InsightFaceAligner)
    photo = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    faces = aligner.align(photo)
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(faces[0].landmarks, kps, atol=1e-3)
    np.testing.assert_allclose(faces[0].bbox, [260, 240, 380, 400], atol=1e-3)
    np.testing.assert_array_equal(faces[0].image, warp_face(photo, kps))  # RGB in, RGB crop out
    # a smaller photo is letterboxed into the detector input and the landmarks scaled back (640/480)
    small = aligner.align(np.zeros((480, 320, 3), np.uint8))
    np.testing.assert_allclose(small[0].landmarks, kps * 0.75, atol=1e-3)


@pytest.mark.slow
def test_dlib_aligner_on_celeba_subset(celeba_root):
    pytest.importorskip("dlib")
    from PIL import Image

    aligner = build_aligner("dlib")
    files = [sorted(p.iterdir())[0] for p in sorted(q for q in celeba_root.iterdir() if q.is_dir())[:24]]
    found, crops = 0, []
    for file in files:
        faces = aligner.align(np.asarray(Image.open(file).convert("RGB")))
        if faces:
            found += 1
            crops.append(faces[0].image)
            assert faces[0].image.shape == (112, 112, 3) and faces[0].landmarks.shape == (5, 2)
            # left eye (image-left) comes first
            assert faces[0].landmarks[0, 0] < faces[0].landmarks[1, 0]
    rate = found / len(files)
    print(f"dlib aligner on CelebA subset: {found}/{len(files)} images with a face ({rate:.0%})")
    assert rate >= 0.75
    # re-detecting on an aligned crop finds the landmarks near the template
    errors = []
    for crop in crops[:6]:
        again = aligner.align(crop)
        if again:
            errors.append(np.abs(again[0].landmarks - ARCFACE_TEMPLATE).mean())
    assert errors and np.median(errors) < 4.0, errors
