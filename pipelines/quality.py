"""The ``quality`` stage: dataset-quality statistics, figures and a report for a shard dataset.

Wiring only: the numbers come from :func:`facesynth.data_cards.quality_metrics.compute_quality`
and the figures from :mod:`facesynth.data_cards.figures`. This module reads the shards and chooses
the embeddings:

* with ``encoder`` (``torch:PATH``, ``onnx:PATH``, ``insightface:NAME``, ``dlib``): every image is
  re-embedded by that evaluation encoder (ideally independent of the generator's). The stored
  ``embedding`` column, when present, is then the condition y_ij of each image, and the normalised
  class mean of the conditions stands in for the identity anchor w_i (exact when a generator gives all
  images of an identity the same condition; an approximation otherwise).
* without ``encoder``: the stored ``embedding`` column is evaluated as is (for generated data that
  measures the conditions, not the rendered images; the report says which it was).

``reference`` is a shard dataset of real identities; its class centres (from the same encoder, or
from its stored embeddings) are the targets of the leakage check. Outputs, in ``out`` (default: the
dataset folder): ``quality.json``, ``quality.md``, ``figures/sample_grid.png`` and
``figures/similarity_histograms.png``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from facesynth.core.atomic_io import atomic_write, write_json_atomic
from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError, ShardError
from facesynth.core.shard_format import decode_image, read_schema
from facesynth.core.shard_reader import ShardDataset, dataset_files, read_columns
from facesynth.data_cards.quality_metrics import (
    ATTRIBUTE_NAMES,
    QualitySettings,
    class_centres,
    encode_labels,
)

logger = logging.getLogger(__name__)

QUALITY_JSON = "quality.json"
QUALITY_MD = "quality.md"
FIGURES_DIR = "figures"
GRID_PNG = f"{FIGURES_DIR}/sample_grid.png"
HIST_PNG = f"{FIGURES_DIR}/similarity_histograms.png"
OPTIONAL_COLUMNS = ("embedding", "attributes", "anchor_cos", "id_cos")


class QualityConfig(StageConfig):
    """Settings of ``facesynth quality``."""

    dataset: Path
    encoder: str | None = Field(None, description="evaluation encoder spec; None: use the stored embeddings")
    reference: Path | None = Field(None, description="shard dataset of real identities for the leakage check")
    out: Path | None = Field(None, description="output folder; default: the dataset folder")
    device: str = Field("auto", description="encoder device: auto (CUDA when available), cpu, cuda, cuda:K")
    batch_size: int = Field(64, gt=0)
    grid_identities: int = Field(8, ge=1)
    grid_images: int = Field(8, ge=1)
    metrics: QualitySettings = Field(default_factory=QualitySettings)
    allow_plain_parquet: bool = Field(
        False, description="read dataset folders that have no facesynth.json (plain Parquet), unchecked"
    )


@dataclass
class QualityResult:
    report: dict[str, Any]
    json_path: Path
    markdown_path: Path
    figures: dict[str, Path] = field(default_factory=dict)


def _columns_of(source: Path, allow_plain: bool = False) -> list[str]:
    return read_schema(dataset_files(source, allow_plain=allow_plain)[0]).names


def _embed_images(
    source: Path,
    encoder,
    batch_size: int,
    expected_labels: np.ndarray,
    show_progress: bool,
    allow_plain: bool = False,
) -> np.ndarray:
    """Re-embed every image of ``source`` in file / row-group order (the order of ``read_columns``)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    # an undecodable image is an error naming it (skipping it would shift every later row)
    dataset = ShardDataset(source, shuffle=False, skip_bad_images=False, allow_plain=allow_plain)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=_collate_same_size(source))
    parts: list[np.ndarray] = []
    seen = 0
    with tqdm(
        total=dataset.num_rows, desc=f"embed {source.name}", unit="img", disable=not show_progress
    ) as bar:
        for batch in loader:
            labels = batch["label"].numpy()
            if not np.array_equal(labels, expected_labels[seen : seen + labels.size]):
                raise ShardError(f"{source}: rows changed while reading (labels out of order at row {seen})")
            with torch.inference_mode():
                parts.append(encoder.embed(batch["image"]).float().cpu().numpy())
            seen += labels.size
            bar.update(labels.size)
    result = np.concatenate(parts) if parts else np.zeros((0, encoder.embedding_dim), dtype=np.float32)
    return check_finite_embeddings(result, source, "embeddings from the encoder")


def _collate_same_size(source: Path):
    """default_collate, with a clear error when a batch mixes image sizes (instead of torch's)."""
    from torch.utils.data import default_collate

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        shapes = sorted({tuple(item["image"].shape) for item in items})
        if len(shapes) > 1:
            sizes = ", ".join(f"{s[2]}x{s[1]}" for s in shapes)
            raise ShardError(
                f"{source}: images of different sizes ({sizes}); run `facesynth verify {source}`"
            )
        return default_collate(items)

    return collate


def check_finite_embeddings(embeddings: np.ndarray, source: Path, what: str) -> np.ndarray:
    """Refuse NaN or infinite embeddings, naming how many rows and the first one."""
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        raise ShardError(
            f"{source}: {int(bad.sum())} {what} hold NaN or infinite values (first at row {int(np.argmax(bad))})"
        )
    return embeddings


def check_output_writable(out: Path) -> None:
    """Create the output folder and prove it writable before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".quality-probe-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FacesynthError(
            f"{out}: quality output folder is not writable ({exc.strerror or exc})"
        ) from None


def _stored_embeddings(table: pa.Table, source: Path) -> np.ndarray:
    if "embedding" not in table.column_names:
        raise FacesynthError(
            f"{source}: the shards have no embedding column; pass --encoder to embed the images"
        )
    column = table["embedding"].combine_chunks()
    if column.null_count:
        raise ShardError(f"{source}: {column.null_count} rows have no embedding")
    width = column.type.list_size
    values = np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, width)
    return check_finite_embeddings(values, source, "stored embeddings")


def _attributes(table: pa.Table) -> np.ndarray | None:
    if "attributes" not in table.column_names:
        return None
    column = table["attributes"].combine_chunks()
    out = np.full((table.num_rows, len(ATTRIBUTE_NAMES)), np.nan, dtype=np.float64)
    for j, name in enumerate(ATTRIBUTE_NAMES):
        values = column.field(name).to_numpy(zero_copy_only=False).astype(np.float64)
        # a null struct or a null field reads as NaN
        valid = np.asarray(column.is_valid()) & np.asarray(column.field(name).is_valid())
        out[:, j] = np.where(valid, values, np.nan)
    return None if np.isnan(out).all() else out


def _float_column(table: pa.Table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    column = table[name].combine_chunks()
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    values[~np.asarray(column.is_valid())] = np.nan
    return None if np.isnan(values).all() else values


def _first_names(labels: np.ndarray, identities: pa.ChunkedArray) -> list[str]:
    """The identity string of each class, in sorted-label order."""
    _, first = np.unique(labels, return_index=True)
    names = identities.combine_chunks()
    return [str(names[int(i)].as_py()) for i in first]


def reference_centres(
    reference: Path, encoder, batch_size: int, show_progress: bool, allow_plain: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Class centres (normalised means) of a real-identity shard dataset, and their identity names."""
    columns = ["label", "identity", *(["embedding"] if encoder is None else [])]
    table = read_columns(reference, columns, allow_plain=allow_plain)
    labels = table["label"].to_numpy()
    if encoder is None:
        emb = _stored_embeddings(table, reference)
    else:
        emb = _embed_images(reference, encoder, batch_size, labels, show_progress, allow_plain)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    codes, classes = encode_labels(labels)
    centres, _ = class_centres(emb, codes, classes.size)
    return centres, _first_names(labels, table["identity"])


def _grid_images(
    source: Path, labels: list[int], per_identity: int, allow_plain: bool = False
) -> list[list[np.ndarray]]:
    wanted = {label: [] for label in labels}
    for file in dataset_files(source, allow_plain=allow_plain):
        table = pq.read_table(
            file,
            columns=["image", "label", "index"],
            filters=[("label", "in", labels), ("index", "<", per_identity)],
        )
        rows = sorted(
            zip(
                table["label"].to_pylist(),
                table["index"].to_pylist(),
                table["image"].to_pylist(),
                strict=True,
            ),
            key=lambda r: (r[0], r[1]),
        )
        for label, _, cell in rows:
            if len(wanted[label]) < per_identity:
                try:
                    wanted[label].append(decode_image(cell["bytes"]))
                except Exception:  # noqa: BLE001 - a bad image only drops out of the grid
                    logger.warning(
                        "%s: an image of label %s does not decode; left out of the grid", file, label
                    )
        if all(len(v) >= per_identity for v in wanted.values()):
            break
    return [wanted[label] for label in labels]


def _write_markdown(path: Path, report: dict[str, Any], figures: dict[str, str]) -> None:
    from facesynth.data_cards.quality_report import render_quality_markdown

    text = render_quality_markdown(report, figures)
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))


def run_quality(config: QualityConfig, *, show_progress: bool = True) -> QualityResult:
    """Compute the quality report of ``config.dataset`` and write JSON, Markdown and figures."""
    from facesynth.data_cards import figures as figs
    from facesynth.data_cards.quality_metrics import compute_quality

    start = time.perf_counter()
    source = Path(config.dataset)
    out = Path(config.out) if config.out is not None else source
    check_output_writable(out)
    plain = config.allow_plain_parquet
    present = set(_columns_of(source, plain))
    columns = ["label", "identity", *[c for c in OPTIONAL_COLUMNS if c in present]]
    table = read_columns(source, columns, allow_plain=plain)
    if table.num_rows == 0:
        raise ShardError(f"{source}: the dataset has no rows")
    labels = table["label"].to_numpy()
    logger.info("%s: %d images of %d identities", source, table.num_rows, np.unique(labels).size)

    encoder = None
    conditions = anchors = None
    if config.encoder:
        from facesynth.recognizers.encoders import load_encoder

        encoder = load_encoder(config.encoder, device=config.device)
        embeddings = _embed_images(source, encoder, config.batch_size, labels, show_progress, plain)
        source_text = f"the evaluation encoder `{config.encoder}`"
        if "embedding" in present:
            conditions = _stored_embeddings(table, source)
            if conditions.shape[1] == embeddings.shape[1]:
                codes, classes = encode_labels(labels)
                unit = conditions / np.maximum(np.linalg.norm(conditions, axis=1, keepdims=True), 1e-12)
                anchors, _ = class_centres(unit.astype(np.float32), codes, classes.size)
            else:
                logger.warning(
                    "stored conditions are %d-d but the encoder gives %d-d embeddings; no anchor statistics",
                    conditions.shape[1],
                    embeddings.shape[1],
                )
                conditions = None
    else:
        embeddings = _stored_embeddings(table, source)
        source_text = "the stored embedding column (for generated data: the generator's conditions)"

    ref_centres = ref_names = None
    if config.reference is not None:
        ref_centres, ref_names = reference_centres(
            Path(config.reference), encoder, config.batch_size, show_progress, plain
        )
        if ref_centres.shape[1] != embeddings.shape[1]:
            raise FacesynthError(
                f"{config.reference}: reference embeddings are {ref_centres.shape[1]}-d but the dataset's are "
                f"{embeddings.shape[1]}-d; use the same --encoder for both"
            )

    class_names = _first_names(labels, table["identity"])
    report = compute_quality(
        embeddings,
        labels,
        conditions=conditions,
        anchors=anchors,
        attributes=_attributes(table),
        anchor_cos=_float_column(table, "anchor_cos"),
        id_cos=_float_column(table, "id_cos"),
        reference_centres=ref_centres,
        class_names=class_names,
        reference_names=ref_names,
        settings=config.metrics,
    )
    report = {
        "dataset": source.name,  # the report may be published: no local paths
        "embedding_source": source_text,
        "encoder": config.encoder,
        "reference": Path(config.reference).name if config.reference is not None else None,
        **report,
    }

    # figures
    fig_paths: dict[str, Path] = {}
    grid_labels = sorted(np.unique(labels).tolist())[: config.grid_identities]
    names = dict(zip(sorted(np.unique(labels).tolist()), class_names, strict=True))
    grid = _grid_images(source, grid_labels, config.grid_images, plain)
    if any(grid):
        fig_paths["sample grid"] = figs.sample_grid(
            grid,
            out / GRID_PNG,
            row_titles=[names[label] for label in grid_labels],
            title=f"{source.name}: samples",
        )
    inter = report["inter_class"]
    thresholds = {"EER": inter.get("eer_threshold")}
    fmr3 = (inter.get("fnmr_at_fmr") or {}).get("0.001") or {}
    if fmr3.get("threshold") is not None:
        thresholds["FMR 1e-3"] = fmr3["threshold"]
    histograms = {"genuine (image pairs)": inter["genuine_histogram"]}
    if inter["image_impostor_sampled"].get("histogram"):
        histograms["impostor (image pairs)"] = inter["image_impostor_sampled"]["histogram"]
    if inter["centre_impostor"].get("histogram"):
        histograms["impostor (class centres)"] = inter["centre_impostor"]["histogram"]
    fig_paths["similarity histograms"] = figs.score_histograms(
        histograms, out / HIST_PNG, thresholds={k: v for k, v in thresholds.items() if v is not None}
    )
    report["figures"] = {name: path.relative_to(out).as_posix() for name, path in fig_paths.items()}
    report["seconds"] = round(time.perf_counter() - start, 3)

    json_path = out / QUALITY_JSON
    write_json_atomic(json_path, report)
    md_path = out / QUALITY_MD
    _write_markdown(md_path, report, report["figures"])
    logger.info("quality report: %s (%.1f s)", json_path, report["seconds"])
    return QualityResult(report, json_path, md_path, fig_paths)
