"""Shared pytest fixtures: offline, CPU, seeded, and the optional real data in ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("FACESYNTH_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _registries_restored():
    """Whatever a test registers (a generator, backbone, head or method) is forgotten after it."""
    from facesynth.core.registry import all_registries_restored

    with all_registries_restored():
        yield


@pytest.fixture(scope="session")
def orl_root() -> Path:
    """``../shared/datasets/orl_att_faces/orl_faces`` (40 x 10 grey PGM faces); skips when absent."""
    root = SHARED_DATASETS / "orl_att_faces" / "orl_faces"
    if not root.is_dir():
        pytest.skip(f"ORL faces not found at {root}")
    return root


@pytest.fixture(scope="session")
def celeba_root() -> Path:
    """``../shared/datasets/celeba_wild_subset/images`` (100 identities x 10 wild JPEGs); skips when absent."""
    root = SHARED_DATASETS / "celeba_wild_subset" / "images"
    if not root.is_dir():
        pytest.skip(f"CelebA subset not found at {root}")
    return root


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
