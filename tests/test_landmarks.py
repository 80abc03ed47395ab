"""Per-face landmarks: the optional shard column, the trainer's augmentation, DuetFace's ROI per face (issue 15.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facesynth.core.shard_format import (
    ShardRow,
    check_schema,
    has_landmarks,
    read_schema,
    rows_to_table,
    shard_name,
)
from facesynth.core.shard_reader import ShardDataset, sources_have_column
from facesynth.privacy.api import build_privacy_method
from facesynth.privacy.roi_mask import roi_mask_from_landmarks
from facesynth.recognizers.alignment import template
from facesynth.recognizers.trainer import augment, augment_landmarks
from facesynth.tests.shard_fixtures import write_dataset

CLIENT = (4, 4, 8, 8, 16)
LEFT = np.array([[30, 45], [52, 45], [41, 60], [32, 75], [50, 75]], dtype=np.float32)  # a face to the left
RIGHT = LEFT + np.array([40, 0], dtype=np.float32)  # the same face 40 px to the right


def _write(folder, landmarks_per_row):
    rng = np.random.default_rng(0)
    rows = [
        ShardRow(
            image=rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
            label=i % 4,
            identity=f"id{i % 4}",
            index=i // 4,
            landmarks=lm,
        )
        for i, lm in enumerate(landmarks_per_row)
    ]
    write_dataset(folder, [rows], row_group_size=8)
    return folder


def test_landmarks_column_is_optional_and_read_as_tensors(tmp_path):
    new = _write(tmp_path / "new", [LEFT, None, RIGHT, LEFT] * 2)
    old = _write(tmp_path / "old", [None] * 8)
    assert has_landmarks(read_schema(new / shard_name(0, 1)))
    assert not has_landmarks(read_schema(old / shard_name(0, 1)))  # no landmarks: no column, as before
    for folder in (new, old):
        check_schema(folder, read_schema(folder / shard_name(0, 1)))
    assert sources_have_column(new, "landmarks") and not sources_have_column([new, old], "landmarks")
    rows = list(ShardDataset(new, shuffle=False, columns=["landmarks"]))
    assert torch.allclose(rows[0]["landmarks"], torch.from_numpy(LEFT))
    assert torch.isnan(rows[1]["landmarks"]).all()  # null: unknown
    assert len(list(ShardDataset(old, shuffle=False))) == 8  # older shards still read
    with pytest.raises(Exception, match="landmarks"):
        rows_to_table(
            [ShardRow(np.zeros((112, 112, 3), np.uint8), 0, "a", 0, landmarks=np.zeros((3, 2)))], None
        )


def test_generators_and_aligner_provide_crop_landmarks():
    from facesynth.generators.registry import SampleRequest, build_generator
    from facesynth.recognizers.alignment import AlignedFace

    faces = build_generator("parametric", num_identities=2, seed=0).generate(
        [SampleRequest(0, 0, 1), SampleRequest(1, 0, 2)]
    )
    assert all(f.landmarks.shape == (5, 2) for f in faces)
    assert not np.allclose(faces[0].landmarks, faces[1].landmarks)
    # a detected face: source landmarks map onto the crop by the alignment transform (here: 2x scale)
    aligned = AlignedFace(np.zeros((112, 112, 3), np.uint8), template() * 2 + 5, 1.0)
    assert np.allclose(aligned.crop_landmarks, template(), atol=1e-4)
    assert AlignedFace(np.zeros((112, 112, 3), np.uint8), None, 1.0).crop_landmarks is None


def test_two_faces_with_different_landmarks_get_different_masks():
    masks = roi_mask_from_landmarks(np.stack([LEFT, RIGHT]), size=112)
    assert not torch.equal(masks[0], masks[1])
    assert masks[0, 0, 60, 25] == 1 and masks[0, 0, 60, 95] == 0
    assert masks[1, 0, 60, 95] == 1 and masks[1, 0, 60, 25] == 0
    # unknown (all-NaN) landmarks fall back to the ArcFace template, as a shard without the column
    unknown = roi_mask_from_landmarks(np.full((1, 5, 2), np.nan), size=112)
    assert torch.equal(unknown, roi_mask_from_landmarks(None, batch_size=1))
    # through DuetFace's client: the same image with the two landmark sets gives different masks
    method = build_privacy_method("duetface", "tiny", client_widths=CLIENT).eval()
    image = torch.rand(1, 3, 112, 112).repeat(2, 1, 1, 1) * 2 - 1
    payload = method.protect(image, seed=0, landmarks=torch.from_numpy(np.stack([LEFT, RIGHT])))
    m1 = payload.extras["mask1"]
    assert not torch.allclose(m1[0], m1[1])
    assert m1[0, 0, 30, 10:14].max() > 0 and m1[0, 0, 30, 46:50].max() == 0


def test_augment_landmarks_follows_the_image_flips_and_shifts():
    batch, size = 6, (112, 112)
    points = torch.from_numpy(np.stack([LEFT + i for i in range(batch)])).float()
    images = torch.full((batch, 3, 112, 112), -1.0)
    for b in range(batch):  # one bright pixel under the first landmark of each face
        x, y = points[b, 0].round().long()
        images[b, :, y, x] = 1.0
    gen = torch.Generator().manual_seed(3)
    replay = torch.Generator().set_state(gen.get_state())
    out_images = augment(images, size, True, gen, shift=4)
    out_points = augment_landmarks(points, (112, 112), size, True, replay, shift=4)
    for b in range(batch):
        y, x = divmod(int(out_images[b, 0].argmax()), 112)
        assert (x, y) == tuple(out_points[b, 0].round().long().tolist())
    assert torch.isnan(
        augment_landmarks(torch.full((1, 5, 2), float("nan")), size, size, True, None, 2)
    ).all()


@pytest.mark.slow
def test_trainer_and_evaluation_pass_per_face_landmarks(tmp_path, monkeypatch):
    from facesynth.pipelines.pairs import verification_set_from_shards
    from facesynth.privacy.duetface import DuetFace
    from facesynth.privacy.evaluation import evaluate_privacy_method
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    data = _write(tmp_path / "data", [LEFT, RIGHT] * 8)
    seen: list[torch.Tensor | None] = []
    original = DuetFace.roi

    def spy(self, batch_size, device):
        seen.append(None if self._landmarks is None else self._landmarks.clone())
        return original(self, batch_size, device)

    monkeypatch.setattr(DuetFace, "roi", spy)
    train_recognizer(
        RecognizerTrainConfig(
            data=[str(data)],
            output_dir=str(tmp_path / "run"),
            backbone="tiny",
            method="duetface",
            method_kwargs={"stage": "server", "client_widths": list(CLIENT)},
            batch_size=4,
            max_steps=2,
            num_workers=0,
            progress=False,
            tensorboard=False,
            checkpoint_every=0,
            flip=False,
        )
    )
    assert len(seen) >= 2 and all(s is not None and s.shape == (4, 5, 2) for s in seen)
    xs = torch.cat(seen)[:, 0, 0]
    assert set(xs.round().tolist()) == {30.0, 70.0}  # both faces' own landmarks reached the ROI

    pairs = verification_set_from_shards(data, num_pairs=20, seed=0)
    assert pairs.landmarks is not None and pairs.landmarks.shape == (len(pairs.sources), 5, 2)
    seen.clear()
    method = build_privacy_method("duetface", "tiny", client_widths=CLIENT).eval()
    report = evaluate_privacy_method(method, [pairs], seeds=[0], batch_size=16, flip=True)
    assert report["runs"]["0"][0]["landmarks"] == "per face"
    firsts = torch.cat(seen)[:, 0, 0].round()
    assert {30.0, 70.0} <= set(firsts.tolist())  # the originals ...
    assert {111.0 - 30.0, 111.0 - 70.0} <= set(firsts.tolist())  # ... and their mirrors (flip TTA)


def test_evaluation_moves_landmarks_with_faces_resized_to_a_smaller_input():
    """A 32 px DuetFace evaluated on 112 px faces: the ROI follows the face, not the 112 px coordinates."""
    from facesynth.privacy.evaluation import PrivacyEncoder
    from facesynth.recognizers.encoders import resize_faces, resize_landmarks

    method = build_privacy_method("duetface", "tiny", {"input_size": [32, 32]}, client_widths=CLIENT).eval()
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    points = torch.from_numpy(np.stack([LEFT, RIGHT]))
    seen = []
    original = method.protect

    def spy(x, seed=None, landmarks=None):
        seen.append((tuple(x.shape[-2:]), landmarks))
        return original(x, seed=seed, landmarks=landmarks)

    method.protect = spy
    encoder = PrivacyEncoder(method, seed=0)
    with torch.no_grad():
        encoder.embed_with_landmarks(images, points)
    ((size, given),) = seen
    assert size == (32, 32)
    expected = resize_landmarks(points, (112, 112), (32, 32))
    assert torch.allclose(given, expected)
    assert torch.allclose(
        expected[0, 0], torch.tensor([(30 + 0.5) * 32 / 112 - 0.5, (45 + 0.5) * 32 / 112 - 0.5])
    )
    # the masks are those of 32 px faces with their own landmarks: the two faces' ROIs differ
    masks = method.protect(resize_faces(images, (32, 32)), seed=0, landmarks=expected).extras["mask1"]
    assert not torch.allclose(masks[0], masks[1])
    # faces already at the input size keep their landmarks
    seen.clear()
    with torch.no_grad():
        encoder.embed_with_landmarks(resize_faces(images, (32, 32)), expected)
    assert torch.equal(seen[0][1], expected)
