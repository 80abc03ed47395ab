"""The parametric face renderer: purity, shapes, attributes, landmarks, options, and difficulty."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.shard_format import ShardRow, check_schema, rows_to_table
from facesynth.generators.parametric.difficulty import raw_pixel_verification
from facesynth.generators.parametric.parameters import ARCFACE_TEMPLATE_112, POSE_AGE_LIMITS
from facesynth.generators.parametric.renderer import ParametricRenderer
from facesynth.generators.registry import SampleRequest, build_generator, sample_seed

SEED = 7


def _requests(labels, per_identity, seed=SEED):
    return [SampleRequest(k, i, sample_seed(seed, k, i)) for k in labels for i in range(per_identity)]


@pytest.fixture(scope="module")
def renderer() -> ParametricRenderer:
    return ParametricRenderer(num_identities=1000, seed=SEED)


def test_registered_and_configured_by_name():
    gen = build_generator("parametric", num_identities=10, seed=3, difficulty=0.5, image_size=64)
    assert isinstance(gen, ParametricRenderer)
    assert gen.embedding_dim is None
    config = gen.config()
    assert json.loads(json.dumps(config)) == config
    assert config["difficulty"] == 0.5 and config["image_size"] == 64 and config["seed"] == 3
    assert config["num_identities"] == 10 and config["supersample"] == 1


def test_images_shape_dtype_and_no_embedding(renderer):
    faces = renderer.generate(_requests(range(3), 2))
    assert len(faces) == 6
    for face in faces:
        assert face.image.shape == (112, 112, 3) and face.image.dtype == np.uint8
        assert face.embedding is None
        assert face.image.std() > 10  # not a blank canvas
    small = ParametricRenderer(num_identities=2, seed=SEED, image_size=48).generate(_requests(range(1), 1))
    assert small[0].image.shape == (48, 48, 3)


def test_same_request_same_pixels_in_any_batch_order_or_instance(renderer):
    requests = _requests(range(5), 3)
    batch = [face.image for face in renderer.generate(requests)]
    other = ParametricRenderer(num_identities=1000, seed=SEED)  # fresh caches
    reversed_batch = [face.image for face in other.generate(requests[::-1])][::-1]
    one_by_one = [other.generate([r])[0].image for r in requests]
    for a, b, c in zip(batch, reversed_batch, one_by_one, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_same_request_same_pixels_in_another_process(renderer):
    request = SampleRequest(4, 2, sample_seed(SEED, 4, 2))
    digest = hashlib.sha256(renderer.generate([request])[0].image.tobytes()).hexdigest()
    code = (
        "import hashlib;"
        "from facesynth.generators.parametric.renderer import ParametricRenderer;"
        "from facesynth.generators.registry import SampleRequest;"
        f"g = ParametricRenderer(num_identities=1000, seed={SEED});"
        f"img = g.generate([SampleRequest(4, 2, {request.seed})])[0].image;"
        "print(hashlib.sha256(img.tobytes()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == digest


def test_identity_depends_on_dataset_seed_and_label_only():
    a, b = ParametricRenderer(100, seed=1), ParametricRenderer(100, seed=1, difficulty=1.7)
    assert a.identity(5) == b.identity(5)
    assert a.identity(5) != a.identity(6)
    assert a.identity(5) != ParametricRenderer(100, seed=2).identity(5)


def test_different_identities_and_different_seeds_give_different_images():
    frontal = ParametricRenderer(100, seed=SEED, difficulty=0.0)
    images = [face.image.astype(np.int16) for face in frontal.generate(_requests(range(6), 1))]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 5, (i, j)
    # Without nuisance an identity is rendered the same way whatever the request seed ...
    same = frontal.generate([SampleRequest(0, 0, 1), SampleRequest(0, 1, 2)])
    np.testing.assert_array_equal(same[0].image, same[1].image)
    # ... and with nuisance each seed gives a different image.
    hard = ParametricRenderer(100, seed=SEED)
    varied = hard.generate([SampleRequest(0, 0, 1), SampleRequest(0, 1, 2)])
    assert np.abs(varied[0].image.astype(np.int16) - varied[1].image).mean() > 5


def test_attributes_present_in_range_and_varied(renderer):
    faces = renderer.generate(_requests(range(20), 4))
    values = {name: [] for name in POSE_AGE_LIMITS}
    for face in faces:
        assert set(face.attributes) == set(POSE_AGE_LIMITS)
        for name, (lo, hi) in POSE_AGE_LIMITS.items():
            value = face.attributes[name]
            assert isinstance(value, float) and lo <= value <= hi, (name, value)
            values[name].append(value)
    assert np.std(values["yaw"]) > 10 and np.std(values["pitch"]) > 4 and np.std(values["roll"]) > 3
    assert np.std(values["age"]) > 10  # identities span ages
    frontal = ParametricRenderer(10, seed=SEED, difficulty=0.0).generate(_requests(range(3), 2))
    for face in frontal:
        assert face.attributes["yaw"] == face.attributes["pitch"] == face.attributes["roll"] == 0.0


def test_frontal_landmarks_sit_on_the_arcface_template():
    gen = ParametricRenderer(200, seed=SEED, difficulty=0.0)
    landmarks = gen.landmarks(_requests(range(200), 1))
    assert landmarks.shape == (200, 5, 2)
    mean_dev = np.abs(landmarks - ARCFACE_TEMPLATE_112).mean(axis=0)
    assert (mean_dev < 3.5).all(), mean_dev
    assert np.abs(landmarks.mean(axis=0) - ARCFACE_TEMPLATE_112).max() < 1.5
    np.testing.assert_allclose(gen.render(_requests([3], 1)[0]).landmarks, landmarks[3])


def test_layout_scales_with_image_size(renderer):
    requests = _requests(range(4), 2)
    big = ParametricRenderer(num_identities=1000, seed=SEED, image_size=224)
    np.testing.assert_allclose(
        big.landmarks(requests), (renderer.landmarks(requests) + 0.5) * 2 - 0.5, atol=1e-9
    )


def test_landmarks_follow_the_pose_attributes(renderer):
    requests = _requests(range(60), 1)
    landmarks = renderer.landmarks(requests)
    attrs = [face.attributes for face in renderer.generate(requests)]
    eyes = landmarks[:, 1] - landmarks[:, 0]
    eye_line = np.degrees(np.arctan2(-eyes[:, 1], eyes[:, 0]))  # counter-clockwise positive
    roll = np.array([a["roll"] for a in attrs])
    assert np.corrcoef(eye_line, roll)[0, 1] > 0.8  # yaw x pitch and identity asymmetry add a little
    nose_offset = landmarks[:, 2, 0] - landmarks[:, :2, 0].mean(axis=1)
    yaw = np.array([a["yaw"] for a in attrs])
    assert np.corrcoef(nose_offset, yaw)[0, 1] > 0.9


def test_the_eye_landmark_lands_on_a_dark_iris():
    gen = ParametricRenderer(20, seed=SEED, difficulty=0.0, supersample=2)
    for request in _requests(range(5), 1):
        out = gen.render(request)
        for x, y in out.landmarks[:2]:
            centre = out.image[int(round(y)), int(round(x))].astype(int).sum()
            skin = out.image[int(round(y)) + 8, int(round(x))].astype(int).sum()  # below the eye
            assert centre < skin, (request, x, y)


def test_supersampling_renders_the_same_face():
    requests = _requests(range(4), 1)
    plain = ParametricRenderer(10, seed=SEED, difficulty=0.0).generate(requests)
    fine = ParametricRenderer(10, seed=SEED, difficulty=0.0, supersample=2).generate(requests)
    for a, b in zip(plain, fine, strict=True):
        assert b.image.shape == a.image.shape
        assert np.abs(a.image.astype(np.int16) - b.image).mean() < 4


@pytest.mark.parametrize(
    ("options", "field", "value"),
    [
        ({"difficulty": -1.0}, "difficulty", "-1.0"),
        ({"difficulty": 5}, "difficulty", "5"),
        ({"image_size": 8}, "image_size", "8"),
        ({"image_size": "big"}, "image_size", "big"),
        ({"supersample": 0}, "supersample", "0"),
        ({"colour": "red"}, "colour", "unknown"),
    ],
)
def test_bad_options_raise_config_error_naming_them(options, field, value):
    with pytest.raises(ConfigError) as info:
        build_generator("parametric", num_identities=5, seed=0, **options)
    message = str(info.value)
    assert field in message and value in message


def test_bad_counts_and_labels_are_refused():
    with pytest.raises(ConfigError, match="num_identities"):
        ParametricRenderer(num_identities=0, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        ParametricRenderer(num_identities=3, seed="x")
    with pytest.raises(FacesynthError, match="label 3"):
        ParametricRenderer(num_identities=3, seed=0).generate([SampleRequest(3, 0, 1)])


def test_output_fits_the_shard_schema(renderer):
    requests = _requests(range(2), 2)
    rows = [
        ShardRow(
            image=f.image,
            label=r.label,
            identity=f"p-{r.label}",
            index=r.index,
            seed=r.seed,
            attributes=f.attributes,
        )
        for r, f in zip(requests, renderer.generate(requests), strict=True)
    ]
    table = rows_to_table(rows, embedding_dim=None)
    check_schema("in-memory table", table.schema)
    assert table.column("attributes").to_pylist()[0]["yaw"] == pytest.approx(
        rows[0].attributes["yaw"], abs=1e-4
    )


def test_raw_pixels_verify_poorly_but_above_chance():
    """Nuisance must be strong (raw pixels far from solving it) yet identity must survive it."""
    labels = range(500, 560)
    hard = raw_pixel_verification(ParametricRenderer(1000, seed=11), labels)
    easy = raw_pixel_verification(ParametricRenderer(1000, seed=11, difficulty=0.0), labels[:24])
    assert 0.55 <= hard["accuracy"] <= 0.92, hard
    assert hard["genuine_mean_cos"] > hard["impostor_mean_cos"] + 0.1, hard
    assert easy["accuracy"] >= 0.97 and easy["accuracy"] > hard["accuracy"] + 0.1, (easy, hard)
    assert not math.isnan(hard["genuine_mean_cos"])
