"""Face attributes (yaw, pitch, roll, age): the one mapping between physical units and model inputs.

ID3 conditions on pose and age next to the identity embedding. Everything that produces or consumes
attributes (identity sampling, the condition encoder, the trainer, the pipeline) goes through this
module so that the units and ranges are defined once.

Physical units and accepted ranges (reviewer text of the ID3 paper quotes pose in [-90, 90] degrees and
age in [0, 100] years; our choice to accept exactly those ranges):

======  ===========  ==============  =============================
name    unit         accepted range  normalised value (model input)
======  ===========  ==============  =============================
yaw     degrees      [-90, 90]       yaw / 90            in [-1, 1]
pitch   degrees      [-90, 90]       pitch / 90          in [-1, 1]
roll    degrees      [-90, 90]       roll / 90           in [-1, 1]
age     years        [0, 100]        (age - 50) / 50     in [-1, 1]
======  ===========  ==============  =============================

Order is always :data:`ATTRIBUTE_NAMES` = ("yaw", "pitch", "roll", "age"), the shard column order.
Where a shard has no attributes, :data:`NEUTRAL_ATTRIBUTES` (frontal pose, age 35: our choice) stands in,
and the caller says so in its log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.shard_format import ATTRIBUTE_NAMES

__all__ = [
    "ATTRIBUTE_NAMES",
    "ATTRIBUTE_RANGES",
    "ATTRIBUTE_CENTERS",
    "ATTRIBUTE_SCALES",
    "NEUTRAL_ATTRIBUTES",
    "NUM_ATTRIBUTES",
    "attributes_to_array",
    "check_attributes",
    "normalize_attributes",
    "denormalize_attributes",
    "attribute_coverage",
    "require_attribute_coverage",
]

NUM_ATTRIBUTES = len(ATTRIBUTE_NAMES)
#: Accepted physical range (inclusive) of each attribute.
ATTRIBUTE_RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-90.0, 90.0),
    "pitch": (-90.0, 90.0),
    "roll": (-90.0, 90.0),
    "age": (0.0, 100.0),
}
#: normalised = (physical - center) / scale maps every accepted range onto [-1, 1].
ATTRIBUTE_CENTERS: dict[str, float] = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "age": 50.0}
ATTRIBUTE_SCALES: dict[str, float] = {"yaw": 90.0, "pitch": 90.0, "roll": 90.0, "age": 50.0}
#: Stand-in for unknown attributes (physical units): frontal face, age 35 (our choice).
NEUTRAL_ATTRIBUTES: dict[str, float] = {"yaw": 0.0, "pitch": 0.0, "roll": 0.0, "age": 35.0}

_CENTER = np.array([ATTRIBUTE_CENTERS[n] for n in ATTRIBUTE_NAMES], dtype=np.float32)
_SCALE = np.array([ATTRIBUTE_SCALES[n] for n in ATTRIBUTE_NAMES], dtype=np.float32)
_LOW = np.array([ATTRIBUTE_RANGES[n][0] for n in ATTRIBUTE_NAMES], dtype=np.float32)
_HIGH = np.array([ATTRIBUTE_RANGES[n][1] for n in ATTRIBUTE_NAMES], dtype=np.float32)


def attributes_to_array(
    attributes: Sequence[Mapping[str, Any] | None] | None, count: int | None = None
) -> tuple[np.ndarray, int]:
    """Physical attributes as a float32 (B, 4) array in :data:`ATTRIBUTE_NAMES` order.

    ``None`` rows (or ``None`` fields inside a row, or ``attributes=None`` with ``count``) are filled
    with :data:`NEUTRAL_ATTRIBUTES`. Returns the array and the number of filled values, so the caller
    can report how much was missing.
    """
    if attributes is None:
        if count is None:
            raise ValueError("attributes_to_array needs attributes or a count")
        attributes = [None] * count
    out = np.empty((len(attributes), NUM_ATTRIBUTES), dtype=np.float32)
    filled = 0
    for i, row in enumerate(attributes):
        for j, name in enumerate(ATTRIBUTE_NAMES):
            value = None if row is None else row.get(name)
            if value is None:
                value = NEUTRAL_ATTRIBUTES[name]
                filled += 1
            out[i, j] = float(value)
    return out, filled


def check_attributes(attributes: np.ndarray | torch.Tensor, what: str = "attributes") -> None:
    """Raise :class:`FacesynthError` unless ``attributes`` is a finite (B, 4) array inside the ranges."""
    array = (
        attributes.detach().float().cpu().numpy() if torch.is_tensor(attributes) else np.asarray(attributes)
    )
    if array.ndim != 2 or array.shape[1] != NUM_ATTRIBUTES:
        raise FacesynthError(
            f"{what}: expected shape (batch, {NUM_ATTRIBUTES}) with columns {list(ATTRIBUTE_NAMES)}, "
            f"got {tuple(array.shape)}"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise FacesynthError(f"{what}: row {row} {ATTRIBUTE_NAMES[col]} is {array[row, col]} (not finite)")
    outside = (array < _LOW) | (array > _HIGH)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        name = ATTRIBUTE_NAMES[col]
        low, high = ATTRIBUTE_RANGES[name]
        raise FacesynthError(
            f"{what}: row {row} {name}={float(array[row, col]):g} is outside [{low:g}, {high:g}] "
            f"(attributes are physical units: degrees for yaw/pitch/roll, years for age)"
        )


def normalize_attributes(attributes: np.ndarray | torch.Tensor, check: bool = True) -> torch.Tensor:
    """Physical (B, 4) attributes -> normalised float32 tensor in [-1, 1] (checked unless ``check=False``)."""
    if check:
        check_attributes(attributes)
    tensor = torch.as_tensor(attributes, dtype=torch.float32)
    center = torch.as_tensor(_CENTER, device=tensor.device)
    scale = torch.as_tensor(_SCALE, device=tensor.device)
    return (tensor - center) / scale


def denormalize_attributes(normalized: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_attributes` (no range check)."""
    tensor = torch.as_tensor(normalized, dtype=torch.float32)
    center = torch.as_tensor(_CENTER, device=tensor.device)
    scale = torch.as_tensor(_SCALE, device=tensor.device)
    return tensor * scale + center


#: Below this share of measured values, ``use_attributes=True`` training is refused (our choice: "most").
MIN_ATTRIBUTE_COVERAGE = 0.5


def attribute_coverage(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, float]:
    """Share of rows of shard datasets whose attribute is measured (not null), per attribute.

    Reads only the ``attributes`` column. A dataset without that column counts as all missing.
    """
    import pyarrow.parquet as pq

    from facesynth.core.shard_reader import dataset_files

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    known = dict.fromkeys(ATTRIBUTE_NAMES, 0)
    rows = 0
    for source in sources:
        for file in dataset_files(source):
            parquet = pq.ParquetFile(file)
            rows += parquet.metadata.num_rows
            if "attributes" not in parquet.schema_arrow.names:
                continue
            column = parquet.read(columns=["attributes"]).column("attributes").combine_chunks()
            for name in ATTRIBUTE_NAMES:
                values = column.field(name).to_numpy(zero_copy_only=False).astype(np.float64)
                # a null struct has null fields too; pyarrow turns them into NaN here
                valid = np.asarray(column.is_valid()) & ~np.isnan(values)
                known[name] += int(valid.sum())
    return {name: (known[name] / rows if rows else 0.0) for name in ATTRIBUTE_NAMES}


def require_attribute_coverage(
    sources: str | os.PathLike | Sequence[str | os.PathLike], min_fraction: float = MIN_ATTRIBUTE_COVERAGE
) -> dict[str, float]:
    """Refuse attribute-conditioned training on data whose attributes are mostly missing.

    Without this check such a model is "ID3 without attributes" in disguise: the missing values are
    filled with the neutral pose and age, so the model learns to ignore its attribute input.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    coverage = attribute_coverage(sources)
    missing = {name: 1.0 - share for name, share in coverage.items() if share < min_fraction}
    if missing:
        detail = ", ".join(f"{name} missing in {share:.0%} of rows" for name, share in missing.items())
        raise ConfigError(
            f"train-generator: use_attributes=True but the training data {list(map(str, sources))} lacks "
            f"attributes ({detail}; at least {min_fraction:.0%} must be measured). Fix: re-ingest with "
            "pose/age estimation (facesynth ingest estimates head pose from landmarks, and age with an "
            "insightface genderage model), or train without attributes (use_attributes=false)"
        )
    return coverage
