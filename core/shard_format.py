"""Shard format v1: the one on-disk contract every stage reads and writes.

A dataset is a folder of Parquet shards (``data/train-00000-of-00064.parquet``) that
``datasets.load_dataset("parquet", data_dir=...)`` loads as is: the Parquet schema metadata carries
the ``huggingface`` features JSON, so ``image`` decodes as an ``Image`` column. One row per image:

===============  =====================================================================
column           meaning
===============  =====================================================================
``image``        ``{bytes, path}``: PNG or JPEG bytes of an aligned 112x112 RGB face
``label``        int64 class id, 0..N-1
``identity``     string, stable identity id
``index``        int32, image number within the identity
``seed``         int64, the seed the image was drawn from (-1 for real data)
``attributes``   struct {yaw, pitch, roll, age}, null where unknown
``anchor_cos``   float32, requested cosine to the identity anchor, null where unknown
``id_cos``       float32, realised cosine of the re-embedded image, null where unknown
``embedding``    fixed-size list of float32 (only when the dataset has embeddings)
``landmarks``    optional: five (x, y) float32 points on the 112x112 crop (ArcFace order: eyes,
                 nose tip, mouth corners, image-left first), null where unknown; only in shards
                 whose producer knows them (the aligner, the parametric renderer). Older shards
                 without the column read as before; readers treat a missing value as unknown.
===============  =====================================================================
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage

from facesynth.core.atomic_io import commit_temp_file, temp_path_for
from facesynth.core.errors import ShardError

FORMAT_NAME = "facesynth-shards"
FORMAT_VERSION = 1
DATA_DIR = "data"
SPLIT = "train"
IMAGE_SIZE = 112
#: Image sides a shard may hold: square, 32 (the parametric renderer's lower bound) to 1024 px.
MIN_IMAGE_SIDE = 32
MAX_IMAGE_SIDE = 1024
ATTRIBUTE_NAMES = ("yaw", "pitch", "roll", "age")
ROW_GROUP_SIZE = 256
IMAGE_FORMATS = ("png", "jpeg")
NUM_LANDMARKS = 5


def shard_name(index: int, num_shards: int, split: str = SPLIT) -> str:
    """``data/train-00017-of-00042.parquet``, the naming `datasets` and the Hub expect."""
    return f"{DATA_DIR}/{split}-{index:05d}-of-{num_shards:05d}.parquet"


def features(embedding_dim: int | None, landmarks: bool = False):
    """The `datasets.Features` of a v1 shard; ``embedding_dim=None`` drops the embedding column.

    ``landmarks=True`` adds the optional ``landmarks`` column (five (x, y) points per row).
    """
    from datasets import Features, Image, List, Value

    columns: dict[str, Any] = {
        "image": Image(),
        "label": Value("int64"),
        "identity": Value("string"),
        "index": Value("int32"),
        "seed": Value("int64"),
        "attributes": {name: Value("float32") for name in ATTRIBUTE_NAMES},
        "anchor_cos": Value("float32"),
        "id_cos": Value("float32"),
    }
    if embedding_dim is not None:
        columns["embedding"] = List(Value("float32"), length=int(embedding_dim))
    if landmarks:
        columns["landmarks"] = List(List(Value("float32"), length=2), length=NUM_LANDMARKS)
    return Features(columns)


def arrow_schema(embedding_dim: int | None, landmarks: bool = False) -> pa.Schema:
    """Arrow schema with the ``huggingface`` features metadata attached."""
    return features(embedding_dim, landmarks).arrow_schema


def encode_image(image: np.ndarray | PILImage.Image, image_format: str = "png", quality: int = 95) -> bytes:
    """Encode an HxWx3 uint8 array (or a PIL image) as PNG or JPEG bytes."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    pil = (
        image if isinstance(image, PILImage.Image) else PILImage.fromarray(np.asarray(image, dtype=np.uint8))
    )
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    buffer = io.BytesIO()
    if image_format == "png":
        pil.save(buffer, format="PNG", compress_level=1)
    else:
        pil.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_images(images: Sequence[np.ndarray], image_format: str = "png") -> list[bytes]:
    """Encode a batch of images (a picklable unit of work for an encoder process)."""
    return [encode_image(image, image_format) for image in images]


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG bytes into an HxWx3 uint8 array."""
    with PILImage.open(io.BytesIO(data)) as pil:
        return np.asarray(pil.convert("RGB"))


@dataclass
class ShardRow:
    """One image and its metadata, before encoding. ``image`` is raw pixels or already-encoded bytes."""

    image: np.ndarray | bytes
    label: int
    identity: str
    index: int
    seed: int = -1
    embedding: np.ndarray | None = None
    attributes: Mapping[str, float] | None = None
    anchor_cos: float | None = None
    id_cos: float | None = None
    #: (5, 2) pixel (x, y) points on the crop, or None where unknown
    landmarks: np.ndarray | None = None


def _landmark_value(row: ShardRow, i: int) -> list[list[float]] | None:
    if row.landmarks is None:
        return None
    points = np.asarray(row.landmarks, dtype=np.float32)
    if points.shape != (NUM_LANDMARKS, 2) or not np.all(np.isfinite(points)):
        raise ShardError(
            f"row {i} (identity {row.identity!r}): landmarks must be {NUM_LANDMARKS} finite (x, y) points, "
            f"got shape {points.shape}"
        )
    return points.tolist()


def rows_to_table(
    rows: Sequence[ShardRow],
    embedding_dim: int | None,
    image_format: str = "png",
    landmarks: bool | None = None,
) -> pa.Table:
    """Encode rows into an Arrow table with the v1 schema (images encoded here when given as pixels).

    ``landmarks``: whether to write the optional landmarks column; ``None`` writes it when any row
    has landmarks (rows without them get null).
    """
    if landmarks is None:
        landmarks = any(r.landmarks is not None for r in rows)
    schema = arrow_schema(embedding_dim, landmarks)
    images = []
    for row in rows:
        data = row.image if isinstance(row.image, bytes) else encode_image(row.image, image_format)
        images.append({"bytes": data, "path": None})
    columns: dict[str, Any] = {
        "image": images,
        "label": [int(r.label) for r in rows],
        "identity": [str(r.identity) for r in rows],
        "index": [int(r.index) for r in rows],
        "seed": [int(r.seed) for r in rows],
        "attributes": [
            None
            if r.attributes is None
            else {k: None if r.attributes.get(k) is None else float(r.attributes[k]) for k in ATTRIBUTE_NAMES}
            for r in rows
        ],
        "anchor_cos": [None if r.anchor_cos is None else float(r.anchor_cos) for r in rows],
        "id_cos": [None if r.id_cos is None else float(r.id_cos) for r in rows],
    }
    if embedding_dim is not None:
        flat = np.zeros((len(rows), embedding_dim), dtype=np.float32)
        for i, row in enumerate(rows):
            if row.embedding is None:
                raise ShardError(
                    f"row {i} (identity {row.identity!r}) has no embedding but the dataset has one"
                )
            vector = np.asarray(row.embedding, dtype=np.float32).reshape(-1)
            if vector.shape[0] != embedding_dim:
                raise ShardError(
                    f"row {i} (identity {row.identity!r}) has a {vector.shape[0]}-d embedding, expected {embedding_dim}"
                )
            flat[i] = vector
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), embedding_dim)
    if landmarks:
        columns["landmarks"] = [_landmark_value(r, i) for i, r in enumerate(rows)]
    return pa.table(columns, schema=schema)


def write_shard(path: str | os.PathLike, table: pa.Table, row_group_size: int = ROW_GROUP_SIZE) -> None:
    """Write a table as one zstd Parquet shard, atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=row_group_size,
            write_page_index=True,
        )
        commit_temp_file(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """The Arrow schema of a shard, with a clear error for files that are not Parquet."""
    try:
        return pq.read_schema(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file is missing") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(f"{path}: not a readable Parquet file ({exc})") from None


def embedding_dim_of(schema: pa.Schema) -> int | None:
    """The embedding width a shard schema declares, or None if it has no embedding column."""
    if "embedding" not in schema.names:
        return None
    field_type = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(field_type):
        raise ShardError(f"embedding column has type {field_type}, expected a fixed-size list of float32")
    return field_type.list_size


def has_landmarks(schema: pa.Schema) -> bool:
    """Whether a shard schema carries the optional ``landmarks`` column."""
    return "landmarks" in schema.names


def check_schema(path: str | os.PathLike, schema: pa.Schema) -> None:
    """Raise :class:`ShardError` unless ``schema`` is a v1 shard schema (with or without landmarks)."""
    expected = arrow_schema(embedding_dim_of(schema), has_landmarks(schema))
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        missing = sorted(set(expected.names) - set(schema.names))
        extra = sorted(set(schema.names) - set(expected.names))
        detail = f"missing columns {missing}" if missing else ""
        detail += (", " if detail and extra else "") + (f"unexpected columns {extra}" if extra else "")
        raise ShardError(f"{path}: not a facesynth v1 shard ({detail or 'column types differ'})")
    if b"huggingface" not in (schema.metadata or {}):
        raise ShardError(f"{path}: shard lacks the 'huggingface' features metadata")
