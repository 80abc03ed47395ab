"""``generate --generator arc2face`` on tiny random weights in the published folder layout."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from facesynth.core.errors import ConfigError
from facesynth.generators.arc2face_generator import identity_in_token_embeddings
from facesynth.generators.registry import SampleRequest, build_generator, sample_seed
from tests.arc2face_tiny import ID_DIM, build_published_layout, tiny_onnx_recognizer
from tests.cli_processes import run_cli


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc2face")
    model, base = build_published_layout(root)
    encoder = tiny_onnx_recognizer(root / "recognizer.onnx")
    return {"model": str(model), "base_model": str(base), "encoder": f"onnx-torch:{encoder}"}


def options(assets, **extra):
    return {
        "model": assets["model"],
        "base_model": assets["base_model"],
        "embedding_dim": ID_DIM,
        "num_inference_steps": 3,
        "anchors": "random",
        **extra,
    }


@pytest.fixture(scope="module")
def generator(assets):
    return build_generator(
        "arc2face", num_identities=3, seed=4, **options(assets, identity_encoder=assets["encoder"])
    )


def requests(labels, seed=4):
    return [SampleRequest(label, index, sample_seed(seed, label, index)) for label, index in labels]


def test_published_layout_generates_rows_with_identity_columns(generator, tmp_path):
    from facesynth.data_cards.figures import sample_grid

    reqs = requests([(0, 0), (0, 1), (1, 0), (2, 0)])
    faces = generator.generate(reqs)
    for request, face in zip(reqs, faces, strict=True):
        assert face.image.shape == (112, 112, 3) and face.image.dtype == np.uint8
        assert 0.7 <= face.anchor_cos <= 0.9
        realised = float(face.embedding.astype(np.float64) @ generator.anchors[request.label])
        assert realised == pytest.approx(face.anchor_cos, abs=1e-6)
        assert face.attributes is None and -1.0 <= face.id_cos <= 1.0
    assert generator.resolution == 16  # UNet sample_size 8 x VAE factor 2, then centre crop -> 112
    config = generator.config()
    assert "non-commercial" in json.dumps(config["licenses"]) and config["scheduler_class"] == (
        "DPMSolverMultistepScheduler"
    )
    # same request alone -> same face (a pure function of the request)
    again = generator.generate(reqs[2:3])[0]
    assert np.abs(again.image.astype(int) - faces[2].image.astype(int)).max() <= 1
    grid = sample_grid(
        [[f.image for f in faces[:2]], [faces[2].image], [faces[3].image]],
        tmp_path / "arc2face_tiny_grid.png",
        row_titles=["id 0", "id 1", "id 2"],
        title="tiny random Arc2Face weights: noise",
    )
    assert grid.is_file() and grid.stat().st_size > 1000


def test_identity_lands_at_the_id_token_and_changes_the_output(generator):
    text_encoder = generator.text_encoder
    embeddings_module = getattr(text_encoder, "text_model", text_encoder).embeddings
    ids = generator.input_ids
    position = int((ids[0] == generator.id_token_id).nonzero()[0, 0])
    assert position == 4  # <start> photo of a id person
    y = torch.nn.functional.normalize(
        torch.randn(2, ID_DIM, generator=torch.Generator().manual_seed(0)), dim=1
    )

    seen = {}
    handle = embeddings_module.register_forward_hook(lambda _m, _i, out: seen.update(out=out.detach()))
    try:
        with identity_in_token_embeddings(text_encoder, ids.expand(2, -1), generator.id_token_id, y):
            states = text_encoder(ids.expand(2, -1))[0]
    finally:
        handle.remove()
    token_part = seen["out"][:, position] - embeddings_module.position_embedding.weight[position]
    assert torch.allclose(token_part[:, :ID_DIM], y, atol=1e-6)
    assert token_part[:, ID_DIM:].abs().max() < 1e-6  # zero padding up to the CLIP width
    # the other tokens are the ordinary ones
    plain = text_encoder(ids)[0]
    assert torch.allclose(states[:, :position], plain[:, :position].expand(2, -1, -1), atol=1e-6)  # causal
    assert (states[0, position:] - states[1, position:]).abs().max() > 1e-3
    assert torch.allclose(generator.prompt_embeds(y), states, atol=1e-6)

    seeds = [7, 7]
    images = generator.sample(y, seeds)
    assert (images[0] - images[1]).abs().max() > 1e-3  # other identity, same noise: another image
    repeat = generator.sample(y[:1].expand(2, -1), seeds)
    assert torch.allclose(repeat[0], repeat[1], atol=1e-5)  # same identity, same noise: same image


def test_id_guidance_raises_identity_similarity(assets):
    reqs = requests([(label, index) for label in range(3) for index in range(2)])

    def mean_id_cos(kappa):
        gen = build_generator(
            "arc2face",
            num_identities=3,
            seed=4,
            **options(
                assets, identity_encoder=assets["encoder"], id_guidance=kappa, id_guidance_schedule="constant"
            ),
        )
        return float(np.mean([face.id_cos for face in gen.generate(reqs)]))

    plain, guided = mean_id_cos(0.0), mean_id_cos(30.0)
    print(f"mean id_cos: no guidance {plain:.3f}, kappa=30 {guided:.3f}")
    assert guided > plain + 0.05


def test_schedulers_and_bad_options_are_explained(assets):
    gen = build_generator(
        "arc2face", num_identities=2, seed=0, **options(assets, scheduler="EulerDiscreteScheduler")
    )
    assert gen.generate(requests([(1, 0)]))[0].image.shape == (112, 112, 3)
    assert type(gen.scheduler).__name__ == "EulerDiscreteScheduler"
    saved = build_generator("arc2face", num_identities=2, seed=0, **options(assets, scheduler="saved"))
    assert type(saved.scheduler).__name__ == "PNDMScheduler"  # the base model's scheduler_config.json
    with pytest.raises(ConfigError, match="'Nope' is not a diffusers scheduler"):
        build_generator("arc2face", num_identities=2, seed=0, **options(assets, scheduler="Nope"))
    with pytest.raises(ConfigError, match="scales its latents"):
        build_generator(
            "arc2face",
            num_identities=2,
            seed=0,
            **options(assets, scheduler="euler", identity_encoder=assets["encoder"], id_guidance=1.0),
        )
    with pytest.raises(ConfigError, match="needs identity_encoder"):
        build_generator("arc2face", num_identities=2, seed=0, **options(assets, id_guidance=1.0))
    with pytest.raises(ConfigError, match="subfolder 'arc2face'"):
        build_generator("arc2face", num_identities=2, seed=0, **options(assets, model=assets["base_model"]))
    with pytest.raises(ConfigError, match="embedding_dim=64 exceeds the text encoder width 32"):
        build_generator("arc2face", num_identities=2, seed=0, **options(assets, embedding_dim=64))


def _rows(folder):
    rows = {}
    for path in sorted((folder / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows[(row["label"], row["index"])] = row
    return rows


@pytest.mark.slow
def test_one_and_two_processes_write_the_same_dataset_and_card(assets, tmp_path):
    from facesynth.core.integrity import verify_dataset
    from facesynth.pipelines.cards import write_card

    args = ["--generator", "arc2face", "--identities", "4", "--per-identity", "2", "--seed", "3"]
    args += ["--shard-size", "4", "--batch-size", "2", "--no-progress"]
    for key, value in options(assets, identity_encoder=assets["encoder"], id_guidance=2.0).items():
        args += ["-o", f"{key}={value}"]
    single = run_cli("generate", *args, "--out", str(tmp_path / "one"), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    two = run_cli("generate", *args, "--out", str(tmp_path / "two"), nproc=2, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one_rows, two_rows = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert sorted(one_rows) == [(label, index) for label in range(4) for index in range(2)]
    assert one_rows == two_rows
    assert verify_dataset(tmp_path / "two") == []
    assert all(row["id_cos"] is not None and row["attributes"] is None for row in one_rows.values())

    card = write_card(tmp_path / "one").read_text()
    assert "license: cc-by-nc-4.0" in card and "Non-commercial research use only" in card
    assert "CreativeML OpenRAIL-M" in card and "WebFace42M" in card


def test_recipe_is_a_valid_option_file():
    from pathlib import Path

    from facesynth.core.config import load_config_file
    from facesynth.generators.arc2face_generator import Arc2FaceOptions

    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "arc2face_10k_x50.yaml"
    opts = Arc2FaceOptions.from_mapping(load_config_file(recipe), source=str(recipe))
    assert opts.embedding_dim == 512 and opts.num_inference_steps == 25 and opts.guidance_scale == 3.0
    assert opts.identity_encoder.startswith("onnx-torch:") and opts.eval_encoder is None


def test_detector_misses_fall_back_to_the_centre_crop_and_are_counted(assets):
    """Noise from tiny weights has no face: the dlib aligner finds none, the centre crop is kept."""
    pytest.importorskip("dlib")
    aligned = build_generator("arc2face", num_identities=3, seed=4, **options(assets, aligner="dlib"))
    reqs = requests([(0, 0), (1, 0)])
    faces = aligned.generate(reqs)
    assert aligned.missed_detections == 2
    plain = build_generator("arc2face", num_identities=3, seed=4, **options(assets))
    for face, reference in zip(faces, plain.generate(reqs), strict=True):
        assert np.array_equal(face.image, reference.image)
