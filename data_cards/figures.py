"""Figures for dataset cards and quality reports (matplotlib, Agg backend, PNG files).

Both figures are drawn from plain data: a list of per-identity image lists for the sample grid, and
the histogram dicts (``{"edges": [...], "counts": [...]}``) that
:func:`facesynth.data_cards.quality_metrics.compute_quality` puts in its report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.core.atomic_io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=fig.dpi)
    return path


def sample_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike,
    row_titles: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 0.9,
) -> Path:
    """Save a grid with one identity per row and its images (HxWx3 uint8) along the row."""
    if not rows or not any(len(r) for r in rows):
        raise ValueError("sample_grid needs at least one image")
    plt = _pyplot()
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    label_inches = 0.06 * max((len(str(t)) for t in row_titles), default=0) + 0.1 if row_titles else 0.05
    width = cell_inches * n_cols + label_inches + 0.1
    height = cell_inches * n_rows + (0.35 if title else 0.05)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False, dpi=100)
    for r, images in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(np.asarray(images[c], dtype=np.uint8), aspect="auto")
        if row_titles is not None:
            axes[r][0].text(
                -0.04,
                0.5,
                str(row_titles[r]),
                transform=axes[r][0].transAxes,
                ha="right",
                va="center",
                fontsize=7,
            )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=label_inches / width,
        right=1 - 0.05 / width,
        top=1 - (0.3 if title else 0.02) / height,
        bottom=0.02 / height,
        wspace=0.03,
        hspace=0.03,
    )
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def score_histograms(
    histograms: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    thresholds: Mapping[str, float] | None = None,
    title: str = "Genuine vs impostor cosine similarity",
) -> Path:
    """Save overlaid, density-normalised histograms (e.g. ``{"genuine": h, "impostor": h}``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=100)
    for label, hist in histograms.items():
        edges = np.asarray(hist["edges"], dtype=np.float64)
        counts = np.asarray(hist["counts"], dtype=np.float64)
        if counts.sum() == 0:
            continue
        density = counts / (counts.sum() * np.diff(edges))
        ax.stairs(density, edges, fill=True, alpha=0.45, label=f"{label} (n={int(counts.sum()):,})")
    for name, value in (thresholds or {}).items():
        ax.axvline(value, linestyle="--", linewidth=1, color="black")
        ax.text(value, ax.get_ylim()[1] * 0.95, f" {name} threshold\n {value:.3f}", fontsize=7, va="top")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_xlim(-1, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
