"""`quality` on broken inputs: clear errors instead of tracebacks or misleading messages (issue 13.11)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from facesynth.core.errors import FacesynthError, ShardError
from facesynth.core.shard_format import ShardRow
from facesynth.pipelines.quality import QualityConfig, run_quality
from facesynth.tests.shard_fixtures import face_rows, write_dataset


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    import torch

    from facesynth.recognizers.backbones import build_backbone, save_backbone

    torch.manual_seed(0)
    return save_backbone(build_backbone("tiny"), tmp_path_factory.mktemp("enc") / "encoder")


def test_nan_stored_embeddings_are_named(tmp_path):
    rows = face_rows([0, 0, 1, 1], dim=4)
    rows[2].embedding = np.full(4, np.nan, np.float32)
    write_dataset(tmp_path / "ds", [rows], embedding_dim=4)
    with pytest.raises(
        ShardError, match=r"1 stored embeddings hold NaN or infinite values \(first at row 2\)"
    ):
        run_quality(QualityConfig(dataset=tmp_path / "ds", out=tmp_path / "q"), show_progress=False)


def test_corrupt_image_is_named_not_rows_changed(tmp_path, tiny_encoder):
    rows = face_rows([0, 0, 1, 1])
    rows[1] = ShardRow(image=b"junk", label=0, identity="id0", index=1)
    write_dataset(tmp_path / "ds", [rows])
    config = QualityConfig(dataset=tmp_path / "ds", out=tmp_path / "q", encoder=f"torch:{tiny_encoder}")
    with pytest.raises(ShardError, match="undecodable image"):
        run_quality(config, show_progress=False)


def test_mixed_image_sizes_are_a_clear_error(tmp_path, tiny_encoder):
    write_dataset(tmp_path / "ds", [face_rows([0, 0], size=112) + face_rows([1, 1], size=64)])
    config = QualityConfig(
        dataset=tmp_path / "ds", out=tmp_path / "q", encoder=f"torch:{tiny_encoder}", batch_size=4
    )
    with pytest.raises(ShardError, match="64x64"):
        run_quality(config, show_progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_is_refused_first(tmp_path):
    write_dataset(tmp_path / "ds", [face_rows([0, 0, 1, 1], dim=4)], embedding_dim=4)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(FacesynthError, match="not writable"):
        run_quality(QualityConfig(dataset=tmp_path / "ds", out=locked / "q"), show_progress=False)


def test_output_path_that_is_a_file_is_refused_first(tmp_path):
    write_dataset(tmp_path / "ds", [face_rows([0, 0, 1, 1], dim=4)], embedding_dim=4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FacesynthError, match="not writable"):
        run_quality(QualityConfig(dataset=tmp_path / "ds", out=tmp_path / "file"), show_progress=False)
