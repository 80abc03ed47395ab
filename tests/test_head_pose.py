"""Head pose from landmarks: error against the parametric renderer's known pose, mirror symmetry on real
faces (ORL, CelebA), and ingest storing the measured pose (age stays null without a genderage model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from facesynth.core.errors import FacesynthError
from facesynth.generators.parametric.renderer import ParametricRenderer, face_landmarks
from facesynth.generators.registry import SampleRequest
from facesynth.recognizers.alignment import ARCFACE_TEMPLATE
from facesynth.recognizers.face_attributes import FaceAttributeEstimator
from facesynth.recognizers.head_pose import estimate_head_pose, estimate_head_poses

#: mean absolute error bounds (degrees) on 200 renders at the default difficulty; measured:
#: parametric model 2.8 / 4.0 / 0.7, human model 3.6 / 5.6 / 0.8 (yaw / pitch / roll). Most of the
#: pitch error is identity geometry (nose height varies per identity: 3.9 deg at frontal pose).
BOUNDS = {"parametric": (4.0, 5.5, 1.5), "human": (5.0, 7.0, 1.5)}


@pytest.mark.parametrize("model", ["parametric", "human"])
def test_pose_error_on_rendered_faces_is_below_the_bound(model):
    renderer = ParametricRenderer(50, seed=3)
    requests = [
        SampleRequest(label=label, index=i, seed=1000 * label + i) for label in range(50) for i in range(4)
    ]
    truth = np.array([[n.yaw, n.pitch, n.roll] for n in map(renderer.nuisance, requests)])
    estimate = estimate_head_poses(renderer.landmarks(requests), model)
    mae = np.abs(estimate - truth).mean(axis=0)
    print(f"head pose MAE on renders ({model} model), yaw/pitch/roll: {mae.round(2)}")
    assert (mae < np.array(BOUNDS[model])).all(), mae
    assert truth[:, 0].std() > 15  # the renders do vary in pose


def test_each_angle_moves_in_the_documented_direction():
    renderer = ParametricRenderer(2, seed=0, difficulty=0.0)
    ident = renderer.identity(0)
    frontal = renderer.nuisance(SampleRequest(0, 0, 0))
    base = estimate_head_pose(face_landmarks(ident, frontal), "parametric")
    for name in ("yaw", "pitch", "roll"):
        turned = dataclasses.replace(frontal, **{name: 20.0})
        change = estimate_head_pose(face_landmarks(ident, turned), "parametric")[name] - base[name]
        assert 15.0 < change < 25.0, (name, change)


def test_template_is_frontal_and_68_points_are_accepted():
    pose = estimate_head_pose(np.asarray(ARCFACE_TEMPLATE))
    assert max(abs(v) for v in pose.values()) < 0.1
    points68 = np.zeros((68, 2))
    points68[36:42] = ARCFACE_TEMPLATE[0]
    points68[42:48] = ARCFACE_TEMPLATE[1]
    points68[30], points68[48], points68[54] = ARCFACE_TEMPLATE[2], ARCFACE_TEMPLATE[3], ARCFACE_TEMPLATE[4]
    assert max(abs(v) for v in estimate_head_pose(points68).values()) < 0.1
    with pytest.raises(FacesynthError, match=r"\(5, 2\) or \(68, 2\)"):
        estimate_head_pose(np.zeros((4, 2)))


def _mirror_check(files, limit: int) -> tuple[int, np.ndarray]:
    """Pose of each photo and of its mirror image (dlib landmarks): yaw and roll flip sign, pitch stays."""
    from PIL import Image

    from facesynth.recognizers.alignment import build_aligner

    aligner = build_aligner("dlib")
    pairs = []
    for file in files[:limit]:
        photo = np.asarray(Image.open(file).convert("RGB"))
        faces, mirrored = aligner.align(photo), aligner.align(np.ascontiguousarray(photo[:, ::-1]))
        if faces and mirrored:
            a = estimate_head_pose(faces[0].landmarks)
            b = estimate_head_pose(mirrored[0].landmarks)
            pairs.append([a["yaw"], b["yaw"], a["pitch"], b["pitch"], a["roll"], b["roll"]])
    return len(pairs), np.array(pairs)


@pytest.mark.slow
def test_pose_on_real_faces_is_mirror_consistent(celeba_root, orl_root):
    pytest.importorskip("dlib")
    celeba = [sorted(p.iterdir())[0] for p in sorted(q for q in celeba_root.iterdir() if q.is_dir())[:16]]
    orl = [orl_root / f"s{i}" / "3.pgm" for i in range(1, 9)]
    for name, files in (("CelebA", celeba), ("ORL", orl)):
        found, poses = _mirror_check(files, len(files))
        assert found >= len(files) // 2, f"{name}: dlib found faces in only {found} of {len(files)}"
        yaw_sum = np.abs(poses[:, 0] + poses[:, 1]).mean()
        pitch_diff = np.abs(poses[:, 2] - poses[:, 3]).mean()
        roll_sum = np.abs(poses[:, 4] + poses[:, 5]).mean()
        spread = np.abs(poses[:, 0]).mean()
        print(
            f"{name}: {found} faces, mean |yaw| {spread:.1f} deg; mirror errors: yaw {yaw_sum:.2f}, "
            f"pitch {pitch_diff:.2f}, roll {roll_sum:.2f} deg"
        )
        # measured: CelebA yaw 1.1, pitch 4.9, roll 0.8; ORL 0.9, 1.2, 0.6 (dlib's nose tip is not
        # mirror-exact in wild photos, hence the looser pitch bound)
        assert yaw_sum < 3.0 and pitch_diff < 8.0 and roll_sum < 3.0
        assert (np.abs(poses) <= 90).all()


class _Face:
    def __init__(self, landmarks, bbox=None):
        self.landmarks, self.bbox = landmarks, bbox


def test_attribute_estimator_measures_pose_and_leaves_age_null():
    estimate = FaceAttributeEstimator()
    values = estimate(_Face(np.asarray(ARCFACE_TEMPLATE)), np.zeros((112, 112, 3), np.uint8))
    assert values["age"] is None and abs(values["yaw"]) < 0.1
    assert estimate(_Face(None), np.zeros((112, 112, 3), np.uint8)) is None
    with pytest.raises(FacesynthError, match="age model not found"):
        FaceAttributeEstimator(age_model="/nonexistent/genderage.onnx")


@pytest.mark.slow
def test_ingest_stores_measured_pose(celeba_root, tmp_path):
    pytest.importorskip("dlib")
    from facesynth.core.shard_reader import read_columns
    from facesynth.generators.attributes import attribute_coverage
    from facesynth.pipelines.ingest import IngestConfig, ingest

    source = tmp_path / "src"
    for folder in sorted(q for q in celeba_root.iterdir() if q.is_dir())[:2]:
        (source / folder.name).mkdir(parents=True)
        for file in sorted(folder.iterdir())[:2]:
            (source / folder.name / file.name).symlink_to(file)
    ingest(IngestConfig(source=source, out=tmp_path / "out", aligner="dlib"), show_progress=False)
    rows = read_columns(tmp_path / "out", ["attributes"]).column("attributes").to_pylist()
    assert rows and all(r is not None and r["age"] is None and -90 <= r["yaw"] <= 90 for r in rows)
    coverage = attribute_coverage(tmp_path / "out")
    assert coverage["yaw"] == 1.0 and coverage["age"] == 0.0
