"""Hostile and half-written dataset folders: readers and `verify` refuse them with clear messages
(issue 13 items 3, 4, 6 and 11)."""

from __future__ import annotations

import json

import pytest

from facesynth.core.errors import ShardError
from facesynth.core.integrity import verify_dataset
from facesynth.core.manifest import MANIFEST_NAME, Manifest
from facesynth.core.shard_format import rows_to_table, shard_name, write_shard
from facesynth.core.shard_reader import ShardDataset, read_columns
from facesynth.tests.shard_fixtures import face_rows, write_dataset


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "ds"
    write_dataset(folder, [face_rows([0, 0, 1, 1]), face_rows([2, 2, 3, 3])])
    return folder


def _edit_manifest(folder, change) -> None:
    path = folder / MANIFEST_NAME
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))


def test_readers_follow_the_manifest(dataset):
    assert read_columns(dataset, ["label"]).num_rows == 8
    (dataset / "data" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(ShardError, match="listed in the manifest but missing"):
        ShardDataset(dataset)
    with pytest.raises(ShardError, match="missing"):
        read_columns(dataset, ["label"])


def test_extra_shard_beside_the_listed_ones_is_refused(dataset):
    write_shard(dataset / "data" / "train-00099-of-00100.parquet", rows_to_table(face_rows([0]), None))
    with pytest.raises(ShardError, match="not listed in the manifest"):
        read_columns(dataset, ["label"])


def test_folder_still_being_generated_is_refused(tmp_path):
    folder = tmp_path / "mid"
    write_shard(folder / shard_name(0, 100), rows_to_table(face_rows([0, 1]), None))
    (folder / ".facesynth").mkdir()
    (folder / ".facesynth" / "plan.json").write_text("{}")
    with pytest.raises(ShardError, match="still being written"):
        ShardDataset(folder)
    with pytest.raises(ShardError, match="still being written"):
        read_columns(folder, ["label"])


def test_plain_parquet_folder_is_refused_unless_allowed(tmp_path, caplog):
    """Issue 13.3: no manifest -> refused with verify's message; allow_plain reads it, with a warning."""
    folder = tmp_path / "plain"
    write_shard(folder / shard_name(0, 1), rows_to_table(face_rows([0, 1]), None))
    for read in (lambda: read_columns(folder, ["label"]), lambda: ShardDataset(folder)):
        with pytest.raises(
            ShardError, match=r"manifest is missing .*facesynth verify .*--allow-plain-parquet"
        ):
            read()
    with caplog.at_level("WARNING"):
        assert read_columns(folder, ["label"], allow_plain=True).num_rows == 2
    assert "reading 1 Parquet file(s) unchecked" in caplog.text
    assert len(ShardDataset(folder, allow_plain=True)) == 2


def test_labels_beyond_the_identity_count_are_refused(tmp_path):
    folder = tmp_path / "huge"
    write_dataset(folder, [face_rows([0, 1, 10**9])], num_identities=2)
    problems = verify_dataset(folder)
    assert any("1000000000" in p and "identities" in p for p in problems), problems
    _edit_manifest(folder, lambda d: d["shards"][0].update(label_stop=2))
    with pytest.raises(ShardError, match=r"labels 0\.\.1000000000 outside"):
        read_columns(folder, ["label"])
    with pytest.raises(ShardError, match="outside the manifest's range"):
        list(ShardDataset(folder))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: [d], "JSON list"),
        (lambda d: d.update(num_rows="8"), "num_rows is '8'"),
        (lambda d: d.update(shards={"a": 1}), "shards is dict"),
        (lambda d: d["shards"][0].update(label_start=None), "label range"),
        (lambda d: d["shards"][0].update(file="../outside/x.parquet"), "inside the folder"),
        (lambda d: d["shards"][0].update(file="/etc/passwd"), "inside the folder"),
        (lambda d: d["shards"][0].update(sha256=5), "sha256"),
        (lambda d: d.update(num_identities=True), "num_identities"),
    ],
)
def test_malformed_manifest_is_reported_not_raised(dataset, change, message):
    _edit_manifest(dataset, change)
    problems = verify_dataset(dataset)
    assert len(problems) == 1 and message in problems[0], problems
    with pytest.raises(ShardError, match="manifest"):
        Manifest.read(dataset)


def test_shard_linked_from_outside_is_refused(dataset, tmp_path):
    outside = tmp_path / "secret.parquet"
    shard = dataset / "data" / "train-00000-of-00002.parquet"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)
    assert any("link or leads outside" in p for p in verify_dataset(dataset))
    with pytest.raises(ShardError, match="outside"):
        read_columns(dataset, ["label"])


@pytest.mark.parametrize("size", [1, 16])
def test_tiny_images_fail_verify(tmp_path, size):
    folder = tmp_path / "tiny"
    write_dataset(folder, [face_rows([0, 1], size=size)])
    assert any(f"{size}x{size} image" in p for p in verify_dataset(folder))


def test_mixed_image_sizes_fail_verify(tmp_path):
    folder = tmp_path / "mixed"
    write_dataset(folder, [face_rows([0, 1], size=112), face_rows([2, 3], size=64)])
    assert any("64x64" in p and "others are" in p for p in verify_dataset(folder))
    # one quick look (stride 64) still reads every header
    assert verify_dataset(folder, image_stride=64)
