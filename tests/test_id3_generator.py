"""The ``id3`` generator end to end: a tiny saved ID3Pipeline driven by ``facesynth generate``."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.shard_format import ShardRow, decode_image, rows_to_table, shard_name, write_shard
from facesynth.generators.identity_sampling import make_anchors
from facesynth.generators.registry import SampleRequest, build_generator, sample_seed
from facesynth.tests.shard_fixtures import add_manifest

DIM = 16
REFERENCE_ATTRIBUTES = [
    {"yaw": 20.0, "pitch": -5.0, "roll": 3.0, "age": 25.0},
    {"yaw": -35.0, "pitch": 10.0, "roll": 0.0, "age": 62.0},
    {"yaw": 0.0, "pitch": 0.0, "roll": -8.0, "age": 41.0},
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny ID3Pipeline folder (16x16 pixels, 16-d identities), a tiny IResNet encoder, reference shards."""
    from diffusers import DDPMScheduler

    from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
    from facesynth.generators.id3_pipeline import ID3Pipeline
    from facesynth.generators.id3_unet import build_id3_unet
    from facesynth.recognizers.backbones import build_backbone, save_backbone

    root = tmp_path_factory.mktemp("id3")
    torch.manual_seed(0)
    encoder = build_backbone("tiny", num_features=DIM, input_size=(32, 32)).eval()
    save_backbone(encoder, root / "encoder")
    save_backbone(build_backbone("tiny", num_features=8, input_size=(32, 32)), root / "encoder8")
    unet = build_id3_unet("tiny", sample_size=16, cross_attention_dim=32)
    condition = ID3ConditionEncoder(embedding_dim=DIM, hidden_dims=(32, 32), cross_attention_dim=32)
    pipe = ID3Pipeline(
        unet=unet,
        scheduler=DDPMScheduler(num_train_timesteps=100),
        condition_encoder=condition,
        identity_encoder_spec=f"torch:{root / 'encoder'}",  # what identity_encoder="auto" loads
    )
    pipe.save_pretrained(root / "pipeline")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        vector = rng.standard_normal(DIM)
        rows.append(
            ShardRow(
                image=np.zeros((112, 112, 3), np.uint8),
                label=i,
                identity=f"ref{i}",
                index=0,
                embedding=(vector / np.linalg.norm(vector)).astype(np.float32),
                attributes=REFERENCE_ATTRIBUTES[i % 3] if i < 5 else None,
            )
        )
    write_shard(root / "reference" / shard_name(0, 1), rows_to_table(rows, DIM))
    add_manifest(root / "reference", embedding_dim=DIM)
    return {
        "pipeline": str(root / "pipeline"),
        "encoder": f"torch:{root / 'encoder'}",
        "encoder8": f"torch:{root / 'encoder8'}",
        "reference": str(root / "reference"),
    }


def _options(assets, **extra):
    return {
        "pipeline": assets["pipeline"],
        "num_inference_steps": 2,
        "id_guidance": 0.5,
        "reference": assets["reference"],
        "tammes_steps": 20,
        **extra,
    }


def test_generator_rows_are_consistent_and_batch_independent(assets):
    gen = build_generator("id3", num_identities=3, seed=7, **_options(assets))
    assert gen.identity_encoder_spec == assets["encoder"]  # "auto": the encoder the pipeline records
    assert gen.embedding_dim == DIM and gen.anchors.shape == (3, DIM)
    requests = [
        SampleRequest(label, index, sample_seed(7, label, index)) for label in range(3) for index in range(2)
    ]
    faces = gen.generate(requests)
    assert len(faces) == 6
    for request, face in zip(requests, faces, strict=True):
        assert face.image.shape == (112, 112, 3) and face.image.dtype == np.uint8  # resized from 16x16
        assert 0.7 <= face.anchor_cos <= 0.9
        realised = float(face.embedding.astype(np.float64) @ gen.anchors[request.label].astype(np.float64))
        assert realised == pytest.approx(face.anchor_cos, abs=1e-6)
        assert face.attributes in REFERENCE_ATTRIBUTES
        assert -1.0 <= face.id_cos <= 1.0
    # id_cos is the stored image re-embedded by the encoder, against the anchor
    from facesynth.recognizers.encoders import images_to_tensor, load_encoder

    encoder = load_encoder(assets["encoder"])
    with torch.no_grad():
        batch = torch.nn.functional.interpolate(
            images_to_tensor(faces[4].image[None]), size=(32, 32), mode="bilinear"
        )
        again = torch.nn.functional.normalize(encoder.embed(batch), dim=1)[0].double().numpy()
    assert float(again @ gen.anchors[requests[4].label]) == pytest.approx(faces[4].id_cos, abs=1e-4)
    # same requests one at a time and in another order: same rows
    for i in (5,):
        alone = gen.generate([requests[i]])[0]
        assert np.abs(alone.image.astype(int) - faces[i].image.astype(int)).max() <= 1
        assert np.array_equal(alone.embedding, faces[i].embedding) and alone.anchor_cos == faces[i].anchor_cos
    # different images for different requests of the same identity
    assert not np.array_equal(faces[0].image, faces[1].image)


def test_generate_command_writes_id3_columns(assets, tmp_path):
    from facesynth.pipelines.cli import main

    out = tmp_path / "ds"
    argv = ["generate", "--generator", "id3", "--identities", "3", "--per-identity", "2", "--seed", "5"]
    argv += ["--out", str(out), "--shard-size", "4", "--no-progress", "--batch-size", "4"]
    for key, value in _options(
        assets,
        anchors="random",
        cos_lb=0.5,
        cos_ub=0.7,
        anchor_cache=str(tmp_path / "anchors"),
        identity_encoder=assets["encoder"],
    ).items():
        argv += ["-o", f"{key}={value}"]
    assert main(argv) == 0
    files = sorted((out / "data").glob("*.parquet"))
    assert len(files) == 2  # 2 identities per shard
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    assert [r["label"] for r in rows] == [0, 0, 1, 1, 2, 2]
    anchors = make_anchors(3, DIM, seed=5, method="random").astype(np.float64)  # what the generator used
    (cached,) = (tmp_path / "anchors").glob("anchors-3x16-*.npy")
    assert np.array_equal(np.load(cached), anchors.astype(np.float32))
    for row in rows:
        embedding = np.asarray(row["embedding"], dtype=np.float64)
        assert embedding.shape == (DIM,)
        assert 0.5 <= row["anchor_cos"] <= 0.7
        assert float(embedding @ anchors[row["label"]]) == pytest.approx(row["anchor_cos"], abs=1e-6)
        assert row["attributes"] in REFERENCE_ATTRIBUTES
        assert row["id_cos"] is not None and -1 <= row["id_cos"] <= 1
        assert decode_image(row["image"]["bytes"]).shape == (112, 112, 3)
    # resuming a finished dataset is a no-op; the manifest records the generator's config
    assert main(argv) == 0
    import json

    manifest = json.loads((out / "facesynth.json").read_text())
    assert "anchors_sha256" in json.dumps(manifest)


def test_ablation_switches(assets):
    gen = build_generator(
        "id3",
        num_identities=2,
        seed=1,
        **_options(assets, id_guidance=0, identity_encoder="none", attributes="none"),
    )
    face = gen.generate([SampleRequest(1, 0, 123)])[0]
    assert face.id_cos is None  # no encoder to re-embed with
    assert face.attributes == {
        "yaw": 0.0,
        "pitch": 0.0,
        "roll": 0.0,
        "age": 35.0,
    }  # neutral values the model saw
    assert gen.config()["id_guidance"] == 0


def test_bad_options_are_explained(assets, tmp_path):
    with pytest.raises(ConfigError, match="needs an identity encoder"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, identity_encoder="none"))
    with pytest.raises(ConfigError, match="gives 8-d embeddings but the ID3 model is conditioned on 16-d"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, eval_encoder=assets["encoder8"]))
    with pytest.raises(ConfigError, match="cannot load the identity encoder"):
        build_generator(
            "id3", num_identities=2, seed=0, **_options(assets, identity_encoder=f"torch:{tmp_path}/none")
        )
    with pytest.raises(ConfigError, match="cos_lb <= cos_ub"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, cos_lb=0.9, cos_ub=0.7))
    with pytest.raises(ConfigError, match="num_inference_steps"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, num_inference_steps=0))
    with pytest.raises(ConfigError, match="not a diffusers pipeline folder"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, pipeline=str(tmp_path)))
    anchors = tmp_path / "anchors.npy"
    np.save(anchors, np.eye(4, 32))
    with pytest.raises(FacesynthError, match="32-d but the model expects 16-d"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, anchors=str(anchors)))
    np.save(anchors, np.full((4, DIM), np.nan))
    with pytest.raises(FacesynthError, match="NaN"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, anchors=str(anchors)))
    attrs = tmp_path / "attrs.csv"
    attrs.write_text("yaw,pitch,roll,age\n95,0,0,30\n")
    with pytest.raises(FacesynthError, match="yaw=95 is outside"):
        build_generator("id3", num_identities=2, seed=0, **_options(assets, attributes=str(attrs)))
