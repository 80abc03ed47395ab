"""Figures: PNG files of the expected layout, drawn from plain data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facesynth.data_cards.figures import sample_grid, score_histograms


def test_sample_grid_has_one_row_per_identity(tmp_path):
    rows = [[np.full((112, 112, 3), 40 * r, np.uint8)] * (4 - r) for r in range(3)]  # ragged rows are fine
    path = sample_grid(rows, tmp_path / "figures" / "grid.png", row_titles=["a", "b", "c"], title="t")
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
    assert width > height  # 4 columns, 3 rows
    with pytest.raises(ValueError, match="at least one image"):
        sample_grid([[]], tmp_path / "empty.png")


def test_score_histograms_accept_report_histograms(tmp_path):
    edges = np.linspace(-1, 1, 201).tolist()
    genuine = np.histogram(np.random.default_rng(0).normal(0.7, 0.1, 1000), bins=200, range=(-1, 1))[
        0
    ].tolist()
    empty = [0] * 200
    path = score_histograms(
        {"genuine": {"edges": edges, "counts": genuine}, "impostor": {"edges": edges, "counts": empty}},
        tmp_path / "hist.png",
        thresholds={"EER": 0.4},
    )
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (600, 360)
