"""`facesynth quality` on small shard datasets: stored embeddings, an evaluation encoder, a real reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from facesynth.core.errors import FacesynthError
from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.generators.registry import FaceGenerator, GeneratedFace, register_generator
from facesynth.pipelines.cli import main
from facesynth.pipelines.generate import GenerateConfig, generate_dataset
from facesynth.pipelines.quality import QualityConfig, run_quality
from facesynth.tests.shard_fixtures import add_manifest

DIM = 128  # the tiny IResNet's embedding width, so conditions and encoder embeddings are comparable


def direction(label: int) -> np.ndarray:
    v = np.random.default_rng(1000 + label).normal(size=DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


@register_generator("quality-test-clusters")
class ClusterGenerator(FaceGenerator):
    """Each identity: one flat colour and one condition direction; images vary by a little noise."""

    embedding_dim = DIM

    def __init__(self, num_identities: int, seed: int, device="cpu"):
        self.seed = seed

    def config(self):
        return {"kind": "clusters"}

    def generate(self, requests):
        faces = []
        for r in requests:
            rng = np.random.default_rng(r.seed)
            colour = np.random.default_rng(r.label).integers(0, 255, size=3)
            image = np.clip(colour + rng.normal(0, 8, size=(112, 112, 3)), 0, 255).astype(np.uint8)
            faces.append(
                GeneratedFace(
                    image=image,
                    embedding=direction(r.label),
                    attributes={"yaw": 10.0 * r.index, "pitch": 0.0, "roll": 0.0, "age": 30.0 + r.label},
                    anchor_cos=1.0,
                )
            )
        return faces


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "ds"
    generate_dataset(
        GenerateConfig(
            generator="quality-test-clusters", identities=6, per_identity=4, out=out, shard_size=12
        ),
        show_progress=False,
    )
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 'real' dataset of 5 identities; real-2 is synthetic identity 4's direction."""
    out = tmp_path_factory.mktemp("quality") / "real"
    rng = np.random.default_rng(3)
    rows = []
    for label in range(5):
        centre = direction(4) if label == 2 else direction(500 + label)
        for index in range(3):
            emb = centre + 0.05 * rng.normal(size=DIM)
            rows.append(
                ShardRow(
                    image=np.zeros((112, 112, 3), np.uint8),
                    label=label,
                    identity=f"real-{label}",
                    index=index,
                    embedding=emb,
                )
            )
    write_shard(out / shard_name(0, 1), rows_to_table(rows, DIM))
    add_manifest(out, embedding_dim=DIM)
    return out


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    import torch

    from facesynth.recognizers.backbones import build_backbone, save_backbone

    torch.manual_seed(0)
    return save_backbone(build_backbone("tiny"), tmp_path_factory.mktemp("quality") / "encoder")


def test_stored_embeddings_report_figures_and_leak(dataset, reference, tmp_path):
    result = run_quality(
        QualityConfig(dataset=dataset, reference=reference, out=tmp_path), show_progress=False
    )
    report = json.loads(result.json_path.read_text())
    assert report["counts"]["identities"] == 6 and report["counts"]["images"] == 24
    assert "stored embedding column" in report["embedding_source"]
    # every image of an identity carries the same condition: perfectly consistent, perfectly unique
    assert report["intra_class"]["c_intra"] == 1.0
    assert report["inter_class"]["uniqueness"]["unique"] == 6
    assert report["diversity"]["attributes"]["yaw"]["mean_within_class_std"] == pytest.approx(
        np.std([0, 10, 20, 30])
    )
    assert report["intra_class"]["requested_anchor_cos"]["mean"] == 1.0
    leak = report["leakage"]
    assert leak["flagged_identity_names"] == ["quality-test-clusters-s0-0000004"]
    assert leak["top_matches"][0]["centre_match"] == "real-2"
    for rel in report["figures"].values():
        with Image.open(tmp_path / rel) as png:
            assert png.format == "PNG" and png.size[0] > 100
    md = result.markdown_path.read_text()
    assert "| privacy | identities flagged as leaked | 1 |" in md
    assert "real-2" in md and "![sample grid](figures/sample_grid.png)" in md


@pytest.mark.slow
def test_evaluation_encoder_re_embeds_the_images(dataset, tiny_encoder, tmp_path):
    config = QualityConfig(dataset=dataset, encoder=f"torch:{tiny_encoder}", out=tmp_path, batch_size=8)
    report = run_quality(config, show_progress=False).report
    assert report["encoder"] == f"torch:{tiny_encoder}"
    intra = report["intra_class"]
    # conditions are the stored column, anchors their class means; a random-weight encoder does not
    # reproduce them, so the realised cosines are far from 1 while the image embeddings stay 128-d
    assert intra["identity_flips"]["measured_against"] == "anchor"
    assert intra["cos_to_anchor"]["count"] == 24 and intra["cos_to_anchor"]["mean"] < 0.9
    assert report["counts"]["embedding_dim"] == DIM


def test_mismatched_reference_and_missing_embeddings_are_refused(dataset, tmp_path):
    other = tmp_path / "real8"
    rows = [
        ShardRow(
            image=np.zeros((112, 112, 3), np.uint8), label=0, identity="r", index=0, embedding=np.ones(8)
        )
    ]
    write_shard(other / shard_name(0, 1), rows_to_table(rows, 8))
    add_manifest(other, embedding_dim=8)
    with pytest.raises(FacesynthError, match="8-d but the dataset's are 128-d"):
        run_quality(QualityConfig(dataset=dataset, reference=other, out=tmp_path / "o"), show_progress=False)
    bare = tmp_path / "bare"
    write_shard(
        bare / shard_name(0, 1),
        rows_to_table(
            [ShardRow(image=np.zeros((112, 112, 3), np.uint8), label=0, identity="a", index=0)], None
        ),
    )
    add_manifest(bare)
    with pytest.raises(FacesynthError, match="no embedding column; pass --encoder"):
        run_quality(QualityConfig(dataset=bare), show_progress=False)


def test_cli_quality(dataset, tmp_path, capsys):
    code = main(
        ["quality", str(dataset), "--out", str(tmp_path), "--impostor-pairs", "1000", "--no-progress"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "uniqueness U_class" in out and "quality.json" in out
    assert (tmp_path / "quality.md").is_file()
    assert main(["quality", str(tmp_path / "nowhere"), "--no-progress"]) == 2
