"""facesynth ingest: identity folders (with bad files), ORL in place, HF datasets, shards; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facesynth.core.errors import FacesynthError
from facesynth.core.integrity import verify_dataset
from facesynth.core.manifest import Manifest
from facesynth.core.shard_format import decode_image
from facesynth.core.shard_reader import read_columns
from facesynth.pipelines.cli import main
from facesynth.pipelines.ingest import REPORT_NAME, IngestConfig, ingest
from facesynth.recognizers.backbones import build_backbone, save_backbone
from facesynth.recognizers.encoders import load_encoder
from facesynth.tests.shard_fixtures import add_manifest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "run"
    save_backbone(build_backbone("tiny", input_size=(112, 112)), folder)
    return folder


def _tree(root):
    """3 good identities x 3 faces; one corrupt file, one non-square image, one identity with only junk."""
    rng = np.random.default_rng(0)
    for person in ("alice", "bob", "carol"):
        (root / person).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(
                root / person / f"{i}.png"
            )
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    Image.fromarray(np.zeros((112, 300, 3), np.uint8)).save(root / "carol" / "banner.png")
    (root / "dave").mkdir()
    (root / "dave" / "notes.jpg").write_text("not an image")
    return root


def _all_rows(folder):
    return [row for f in sorted((folder / "data").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def test_ingest_identity_tree_with_bad_files(tmp_path, tiny_model):
    src = _tree(tmp_path / "src")
    out = tmp_path / "out"
    config = IngestConfig(source=src, out=out, encoder=f"torch:{tiny_model}", rows_per_shard=4)
    result = ingest(config, show_progress=False)
    assert (result.num_identities, result.num_images, result.num_skipped) == (3, 9, 3)
    report = json.loads((out / REPORT_NAME).read_text())
    reasons = {item["item"]: item["reason"] for item in report["skipped"]}  # relative: no local paths
    assert str(tmp_path) not in (out / REPORT_NAME).read_text() and report["source"] == "src"
    assert set(reasons) == {"bob/broken.jpg", "carol/banner.png", "dave/notes.jpg"}
    assert reasons["bob/broken.jpg"].startswith("unreadable")
    assert "too far from square" in reasons["carol/banner.png"]
    assert report["num_listed"] == 12 and report["num_written"] == 9
    assert verify_dataset(out) == []
    manifest = Manifest.read(out)
    assert manifest.num_identities == 3 and manifest.embedding_dim == 128
    assert [(s.label_start, s.label_stop) for s in manifest.shards] == [(0, 1), (1, 2), (2, 3)]  # whole ids
    rows = _all_rows(out)
    assert [r["label"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [r["identity"] for r in rows[::3]] == ["alice", "bob", "carol"]
    assert [r["index"] for r in rows[:3]] == [0, 1, 2]
    # the stored embedding is the encoder's embedding of the stored (lossless) image
    encoder = load_encoder(f"torch:{tiny_model}")
    images = np.stack([decode_image(r["image"]["bytes"]) for r in rows])
    np.testing.assert_allclose(
        np.array([r["embedding"] for r in rows]), encoder.embed_numpy(images), atol=1e-5
    )
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(src / "alice" / "0.png")))
    # rerun with the same settings: nothing to do; other settings into the same folder: refused
    assert ingest(config, show_progress=False).reused
    with pytest.raises(FacesynthError, match="other settings"):
        ingest(IngestConfig(source=src, out=out), show_progress=False)


def test_interrupted_ingest_resumes_from_staged_shards(tmp_path, tiny_model, monkeypatch):
    import facesynth.pipelines.ingest as ingest_module

    src = _tree(tmp_path / "src")
    settings = dict(source=src, encoder=f"torch:{tiny_model}", rows_per_shard=4)
    reference = ingest(IngestConfig(out=tmp_path / "ref", **settings), show_progress=False)

    # crash while writing the third shard (two are staged)
    real_write, writes = ingest_module.write_shard, []

    def crashing_write(path, table):
        if len(writes) == 2:
            raise KeyboardInterrupt
        writes.append(path)
        real_write(path, table)

    out = tmp_path / "out"
    monkeypatch.setattr(ingest_module, "write_shard", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        ingest(IngestConfig(out=out, **settings), show_progress=False)
    assert not (out / "facesynth.json").exists()

    # the same command again: only the unfinished shard is aligned and written
    writes.clear()
    monkeypatch.setattr(
        ingest_module, "write_shard", lambda path, table: (writes.append(path), real_write(path, table))
    )
    result = ingest(IngestConfig(out=out, **settings), show_progress=False)
    assert [p.name for p in writes] == ["part-00002.parquet"]
    assert (result.num_identities, result.num_images, result.num_skipped) == (
        reference.num_identities,
        reference.num_images,
        reference.num_skipped,
    )
    assert _all_rows(out) == _all_rows(tmp_path / "ref")
    assert (
        json.loads((out / REPORT_NAME).read_text())["skipped"]
        == json.loads((tmp_path / "ref" / REPORT_NAME).read_text())["skipped"]
    )
    assert verify_dataset(out) == []


@pytest.mark.slow
def test_ingest_orl_in_place(orl_root, tmp_path, tiny_model):
    out = tmp_path / "orl"
    config = IngestConfig(
        source=orl_root, out=out, encoder=f"torch:{tiny_model}", rows_per_shard=50, max_identities=12
    )
    result = ingest(config, show_progress=False)
    counts = (result.num_identities, result.num_images, result.num_skipped, result.num_shards)
    assert counts == (12, 120, 0, 3)
    assert verify_dataset(out) == []
    table = read_columns(out, ["label", "identity", "embedding"])
    assert sorted(set(table.column("label").to_pylist())) == list(range(12))
    assert table.column("identity").to_pylist()[:10] == ["s1"] * 10  # ORL's top-level README is no identity
    first = pq.read_table(sorted((out / "data").glob("*.parquet"))[0], columns=["image"]).column("image")[0]
    assert decode_image(first.as_py()["bytes"]).shape == (112, 112, 3)  # grey 92x112 -> RGB 112x112
    embeddings = np.array(table.column("embedding").to_pylist())
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_ingest_hf_dataset_and_existing_shards(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(5)]
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": [1, 0, 1, 0, 1]},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])}
        ),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    result = ingest(IngestConfig(source=tmp_path / "hf", out=tmp_path / "from_hf"), show_progress=False)
    assert (result.num_identities, result.num_images) == (2, 5)
    rows = _all_rows(tmp_path / "from_hf")
    assert [(r["identity"], r["label"], r["index"]) for r in rows] == [
        ("x", 0, 0),
        ("x", 0, 1),
        ("y", 1, 0),
        ("y", 1, 1),
        ("y", 1, 2),
    ]
    assert "embedding" not in rows[0]  # no encoder chosen
    np.testing.assert_array_equal(decode_image(rows[2]["image"]["bytes"]), np.asarray(images[0]))
    # existing shards in, shards out (e.g. to fill embeddings with another encoder)
    again = ingest(
        IngestConfig(source=tmp_path / "from_hf", out=tmp_path / "again", aligner="none", none_mode="strict"),
        show_progress=False,
    )
    assert (again.num_identities, again.num_images) == (2, 5)
    assert [r["identity"] for r in _all_rows(tmp_path / "again")] == ["x", "x", "y", "y", "y"]


def test_ingest_cli(tmp_path, tiny_model, capsys):
    src = _tree(tmp_path / "src")
    code = main(["ingest", str(src), "--out", str(tmp_path / "o"), "--image-format", "jpeg"])
    assert code == 0
    assert "9 images of 3 identities" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert main(["ingest", str(src), "--out", str(tmp_path / "o3"), "--aligner", "mtcnn"]) == 2
    assert main(["ingest", str(src), "--out", str(tmp_path / "o4"), "--rows-per-shard", "0"]) == 2
    err = capsys.readouterr().err
    assert (
        "ingest source not found" in err
        and "unknown aligner" in err
        and "--rows-per-shard: bad value 0" in err
    )


def test_ingest_from_shards_keeps_attributes(tmp_path):
    from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard

    pose = [{"yaw": 10.0 * i, "pitch": -5.0, "roll": 2.0, "age": 30.0 + i} for i in range(4)]
    rows = [
        ShardRow(
            image=np.full((112, 112, 3), 40 * i, np.uint8),
            label=i // 2,
            identity=f"p{i // 2}",
            index=i % 2,
            attributes=pose[i],
        )
        for i in range(4)
    ]
    write_shard(tmp_path / "src" / shard_name(0, 1), rows_to_table(rows, None))
    add_manifest(tmp_path / "src")
    ingest(IngestConfig(source=tmp_path / "src", out=tmp_path / "out"), show_progress=False)
    assert [r["attributes"] for r in _all_rows(tmp_path / "out")] == pose


# ---- issue 13.2: a kill anywhere in the finish step is completed by the rerun


@pytest.mark.parametrize("kill_at", ["second move", "report", "manifest"])
def test_kill_during_finish_is_completed_by_rerun(tmp_path, tiny_model, monkeypatch, kill_at):
    import facesynth.pipelines.ingest as ingest_module

    src = _tree(tmp_path / "src")
    settings = dict(source=src, encoder=f"torch:{tiny_model}", rows_per_shard=4)
    out = tmp_path / "out"
    real_replace, real_json = ingest_module.os.replace, ingest_module.write_json_atomic
    moves = []

    def replace(a, b):
        if str(a).endswith(".parquet") and "ingest_staging" in str(a):  # a finish-step move
            moves.append(b)
        if kill_at == "second move" and len(moves) == 2:
            raise KeyboardInterrupt
        real_replace(a, b)

    def write_json(path, data):
        name = {"report": REPORT_NAME, "manifest": "facesynth.json"}.get(kill_at)
        if name and path.name == name:
            raise KeyboardInterrupt
        real_json(path, data)

    monkeypatch.setattr(ingest_module.os, "replace", replace)
    monkeypatch.setattr(ingest_module, "write_json_atomic", write_json)
    with pytest.raises(KeyboardInterrupt):
        ingest(IngestConfig(out=out, **settings), show_progress=False)
    assert not (out / "facesynth.json").exists()
    monkeypatch.undo()
    aligned = []
    monkeypatch.setattr(ingest_module, "list_source", lambda config: aligned.append(1) or [])
    result = ingest(IngestConfig(out=out, **settings), show_progress=False)
    assert not aligned  # nothing recomputed: the recorded finish step was completed
    assert (result.num_identities, result.num_images) == (3, 9)
    assert verify_dataset(out) == [] and not (out / ".facesynth" / "ingest_staging").exists()
