"""`facesynth publish`: validation first, a dry run that touches no network, a resumable upload call.

The round trip generate -> quality -> card -> publish --dry-run runs on a tiny parametric dataset.
No test makes a network call: dry runs get an api object whose every method raises, and the
upload path is driven through a recording stand-in for HfApi.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from facesynth.core.errors import FacesynthError
from facesynth.pipelines.cli import main
from facesynth.pipelines.generate import GenerateConfig, generate_dataset
from facesynth.pipelines.publish import (
    IGNORE_PATTERNS,
    HubLimits,
    check_hub_limits,
    list_upload_files,
    publish,
)


class ForbiddenApi:
    """Any attribute access is a test failure: a dry run must not touch the Hub client."""

    def __getattr__(self, name):
        raise AssertionError(f"HfApi.{name} was called during a dry run")


class RecordingApi:
    def __init__(self, fail_with: Exception | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_with = fail_with

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        if self.fail_with:
            raise self.fail_with
        return "https://huggingface.co/datasets/me/tiny"

    def upload_folder(self, *args, **kwargs):
        self.calls.append(("upload_folder", args, kwargs))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """generate (8 x 4 parametric faces, 2 shards) -> quality (tiny encoder) -> card, via the CLI."""
    import torch

    from facesynth.recognizers.backbones import build_backbone, save_backbone

    root = tmp_path_factory.mktemp("publish")
    out = root / "ds"
    generate_dataset(
        GenerateConfig(identities=8, per_identity=4, out=out, shard_size=16), show_progress=False
    )
    torch.manual_seed(0)
    encoder = save_backbone(build_backbone("tiny"), root / "encoder")
    assert (
        main(["quality", str(out), "--encoder", f"torch:{encoder}", "--batch-size", "16", "--no-progress"])
        == 0
    )
    assert main(["card", str(out), "--repo-id", "me/tiny"]) == 0
    return out


@pytest.fixture
def copy(published, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(published, target)
    return target


@pytest.mark.slow
def test_round_trip_dry_run_lists_exactly_the_upload(published, capsys):
    result = publish(published, "me/tiny", dry_run=True, api=ForbiddenApi())
    paths = [p for p, _ in result.plan.files]
    assert paths == [
        "README.md",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "facesynth.json",
        "figures/sample_grid.png",
        "figures/similarity_histograms.png",
        "quality.json",
        "quality.md",
    ]
    assert (published / ".facesynth").is_dir()  # generate's state folder exists but is never uploaded
    assert result.plan.repo_type == "dataset" and not result.uploaded
    card = (published / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["dataset_info"]["splits"][0]["num_examples"] == 32
    assert "parametric" in header["tags"] and "C_intra" in card
    assert main(["publish", str(published), "--repo-id", "me/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "would upload 8 files" in out and "datasets/me/tiny" in out and "dry run: nothing was uploaded" in out
    )
    assert "data/train-00001-of-00002.parquet" in out


def test_missing_shard_is_refused(copy, capsys):
    (copy / "data" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(
        FacesynthError, match="train-00001-of-00002.parquet: shard listed in the manifest is missing"
    ):
        publish(copy, "me/tiny", dry_run=True, api=ForbiddenApi())
    assert main(["publish", str(copy), "--repo-id", "me/tiny", "--dry-run"]) == 2
    assert "not ready to publish" in capsys.readouterr().err


def test_bad_checksum_is_refused(copy):
    shard = copy / "data" / "train-00000-of-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FacesynthError, match="sha256 differs from the manifest"):
        publish(copy, "me/tiny", dry_run=True, api=ForbiddenApi())


def test_card_problems_are_refused(copy):
    card = copy / "README.md"
    text = card.read_text()
    card.write_text(text.replace("- n<1K", "- tiny").replace("num_examples: 32", "num_examples: 31"))
    with pytest.raises(FacesynthError) as err:
        publish(copy, "me/tiny", dry_run=True, api=ForbiddenApi())
    message = str(err.value)
    assert "size_categories value 'tiny'" in message
    assert "says 31 train rows, the manifest 32" in message
    card.unlink()
    with pytest.raises(FacesynthError, match="dataset card is missing"):
        publish(copy, "me/tiny", dry_run=True, api=ForbiddenApi())


def test_upload_creates_the_repo_and_uploads_the_folder(published):
    api = RecordingApi()
    result = publish(published, "me/tiny", private=True, api=api, check_loading=False)
    assert result.uploaded
    (name, args, kwargs), (name2, _, upload) = api.calls
    assert name == "create_repo" and args == ("me/tiny",)
    assert kwargs == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert name2 == "upload_folder"
    assert upload["repo_id"] == "me/tiny" and upload["repo_type"] == "dataset"
    assert upload["folder_path"] == str(published) and upload["ignore_patterns"] == list(IGNORE_PATTERNS)


def test_token_never_appears_in_errors(published, monkeypatch):
    secret = "hf_TESTSECRETTOKEN123"
    monkeypatch.setenv("HF_TOKEN", secret)
    api = RecordingApi(fail_with=RuntimeError(f"401 Unauthorized for token {secret}"))
    with pytest.raises(FacesynthError) as err:
        publish(published, "me/tiny", api=api, check_loading=False)
    assert secret not in str(err.value) and "***" in str(err.value)
    assert "re-run the same command to resume" in str(err.value)


def test_no_token_or_offline_fails_before_any_network(published, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FacesynthError, match="HF_HUB_OFFLINE is set"):
        publish(published, "me/tiny", check_loading=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(
        FacesynthError, match="no Hugging Face token found: set HF_TOKEN or run `hf auth login`"
    ):
        publish(published, "me/tiny", check_loading=False)


def test_bad_repo_id_is_refused(published):
    with pytest.raises(FacesynthError, match="not a valid Hub repo id"):
        publish(published, "no namespace", dry_run=True, api=ForbiddenApi())


def test_model_folder_dry_run_and_pickle_refusal(tmp_path):
    from facesynth.recognizers.backbones import build_backbone, save_backbone

    folder = save_backbone(build_backbone("tiny"), tmp_path / "model")
    assert main(["card", str(folder), "--training-data", "me/tiny"]) == 0
    result = publish(folder, "me/tiny-model", dry_run=True, api=ForbiddenApi())
    assert result.plan.repo_type == "model"
    assert [p for p, _ in result.plan.files] == ["README.md", "backbone.safetensors", "backbone_config.json"]
    (folder / "backbone.pth").write_bytes(b"not really a pickle")
    result = publish(folder, "me/tiny-model", dry_run=True, api=ForbiddenApi())  # left out, not refused
    assert "backbone.pth" not in [p for p, _ in result.plan.files] and "backbone.pth" in result.plan.left_out
    assert any("pickle-based" in w for w in result.plan.warnings)


def test_hub_limits():
    limits = HubLimits()
    many = [(f"data/f{i:05d}.parquet", 10) for i in range(limits.max_folder_entries + 1)]
    problems, warnings = check_hub_limits(many)
    assert problems == [
        f"folder 'data' has {limits.max_folder_entries + 1:,} entries; the Hub allows 10,000 per folder"
    ]
    assert any("several batches" in w for w in warnings)
    problems, warnings = check_hub_limits(
        [("big.parquet", 60 * 10**9), ("large.parquet", 45 * 10**9)], private=True
    )
    assert len(problems) == 1 and problems[0].startswith("big.parquet: 60.0 GB exceeds")
    assert any(w.startswith("large.parquet: 45.0 GB is above the recommended") for w in warnings)
    assert any("free tier" in w for w in warnings)
    too_many = [(f"d{i // 5000}/f{i}", 1) for i in range(limits.max_files + 1)]
    assert any("files per repo" in p for p in check_hub_limits(too_many)[0])


def test_ignored_files_are_not_listed(tmp_path):
    (tmp_path / ".facesynth").mkdir()
    (tmp_path / ".facesynth" / "plan.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".train-00000.parquet.123.tmp").write_text("x")
    (tmp_path / "data" / "train-00000-of-00001.parquet").write_text("x")
    assert [p for p, _ in list_upload_files(tmp_path)] == ["data/train-00000-of-00001.parquet"]


# ---- issues 11.8 and 13.6: publish exactly what the listing shows; model folders; "1 problem"


def test_links_and_unlisted_files_are_never_uploaded(copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    (copy / "notes.txt").write_text("mine")
    (copy / "leak.txt").symlink_to(secret)
    (copy / "figures" / "evil").symlink_to(tmp_path, target_is_directory=True)
    api = RecordingApi()
    result = publish(copy, "me/tiny", api=api, check_loading=False)
    paths = [p for p, _ in result.plan.files]
    assert "leak.txt" not in paths and "notes.txt" not in paths and not any("evil" in p for p in paths)
    assert "notes.txt" in result.plan.left_out
    upload = next(kwargs for name, _, kwargs in api.calls if name == "upload_folder")
    assert upload["allow_patterns"] == [p for p, _ in result.plan.files]  # the upload sends the listing


def test_manifest_entry_outside_the_folder_is_refused(copy):
    import json

    manifest = json.loads((copy / "facesynth.json").read_text())
    manifest["shards"][0]["file"] = "../outside/x.parquet"
    (copy / "facesynth.json").write_text(json.dumps(manifest))
    with pytest.raises(FacesynthError, match=r"(?s)not ready to publish.*inside the folder"):
        publish(copy, "me/tiny", dry_run=True, api=ForbiddenApi())


def test_trained_model_folder_publishes_without_checkpoints(tmp_path):
    from facesynth.recognizers.backbones import build_backbone, save_backbone

    folder = save_backbone(build_backbone("tiny"), tmp_path / "model")
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "checkpoints" / "step-10" / "optimizer.bin").write_bytes(b"pickle")
    (folder / "bench").mkdir()
    (folder / "bench" / "bench.json").write_text("{}")
    (folder / "README.md").write_text("---\nlicense: mit\ntags:\n- facesynth\n---\n# model\n")
    result = publish(folder, "me/model", dry_run=True, api=ForbiddenApi())
    paths = [p for p, _ in result.plan.files]
    assert (
        "bench/bench.json" in paths
        and "README.md" in paths
        and any(p.endswith(".safetensors") for p in paths)
    )
    assert not any(p.startswith("checkpoints/") for p in paths)
    assert "checkpoints/step-10/optimizer.bin" in result.plan.left_out
    assert "left out (1)" in result.plan.describe()
    (folder / "backbone.safetensors").unlink()
    with pytest.raises(FacesynthError, match=r"\(1 problem\):\n  - .*no \*\.safetensors"):
        publish(folder, "me/model", dry_run=True, api=ForbiddenApi(), repo_type="model")
