"""``facesynth ingest``: real face images -> aligned 112x112 v1 shards with embeddings.

Sources (``source_kind="auto"`` picks by looking at the folder):

- ``folders``: an identity-folder tree (LFW / CASIA-WebFace style): ``SRC/<identity>/<image files>``;
- ``hf``: a Hugging Face dataset saved with ``save_to_disk`` (or any local folder that
  ``datasets.load_dataset`` reads) with an image column and an integer label column;
- ``shards``: an existing facesynth shard folder (re-aligned / re-embedded, e.g. with another encoder).

Each image is decoded, aligned by the chosen aligner (best face only) and embedded by the chosen
encoder. Unreadable files and images without a detected face are skipped, counted and listed in
``ingest_report.json``; nothing stops the run. Identities are written in source order (sorted
folder names / label order); an identity whose images were all skipped gets no label, so labels
stay 0..N-1. Shards hold whole identities (``rows_per_shard`` is a target); the manifest is written
last. A rerun with the same settings finds the manifest and does nothing.

Resumable: each finished shard is staged with a sidecar (its label range, rows, checksum and skips).
After a crash or an interrupt, the same command reuses every staged shard whose checksum still
matches and redoes only the rest; other settings discard the staging folder.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from facesynth.core.atomic_io import config_hash, sha256_file, write_json_atomic
from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError
from facesynth.core.locks import output_lock
from facesynth.core.manifest import MANIFEST_NAME, Manifest, ShardRecord
from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard

logger = logging.getLogger(__name__)

REPORT_NAME = "ingest_report.json"
STAGING = ".facesynth/ingest_staging"


class IngestConfig(StageConfig):
    """Settings of ``facesynth ingest``."""

    source: Path
    out: Path
    source_kind: Literal["auto", "folders", "hf", "shards"] = "auto"
    aligner: str = Field(default="none", description="none | dlib | insightface:/path/det_10g.onnx")
    none_mode: Literal["strict", "crop", "resize"] = "crop"
    encoder: str | None = Field(default=None, description="torch:PATH | onnx:PATH | insightface:PATH | dlib")
    age_model: str | None = Field(
        default=None, description="insightface genderage.onnx for the age attribute (None: age stays null)"
    )
    device: str | None = None
    image_format: Literal["png", "jpeg"] = "png"
    rows_per_shard: int = Field(default=5000, gt=0)
    batch_size: int = Field(default=64, gt=0)
    image_column: str = "image"
    label_column: str = "label"
    split: str = "train"
    min_images: int = Field(default=1, ge=1, description="identities with fewer listed images are left out")
    max_identities: int | None = Field(default=None, gt=0)
    allow_plain_parquet: bool = Field(
        default=False,
        description="a shards source may be a Parquet folder without facesynth.json (unchecked)",
    )

    def content_config(self) -> dict[str, Any]:
        """Fields that define the output (``device``/``batch_size`` do not)."""
        data = self.to_json_dict()
        data.update(out=None, device=None, batch_size=None, source=str(Path(self.source).resolve()))
        data.pop("allow_plain_parquet")  # how the source is read, not what it holds
        return data


# A lazily loaded image: returns RGB uint8; raises on unreadable data. ``where`` names it in reports.
@dataclass
class ImageRef:
    where: str
    load: Callable[[], np.ndarray]
    #: yaw/pitch/roll/age carried over from a shard source (None elsewhere: nothing estimates them)
    attributes: dict[str, float] | None = None


@dataclass
class SourceIdentity:
    name: str
    images: list[ImageRef]


@dataclass
class IngestResult:
    out: Path
    num_identities: int
    num_images: int
    num_skipped: int
    num_shards: int
    seconds: float
    skipped: list[dict[str, str]] = field(default_factory=list)
    reused: bool = False


def _decode(data: bytes | None = None, path: Path | None = None) -> np.ndarray:
    from PIL import Image

    from facesynth.recognizers.alignment import ensure_rgb

    with Image.open(io.BytesIO(data) if data is not None else path) as pil:
        pil.load()
        if pil.mode not in ("RGB", "L"):
            pil = pil.convert("RGB")
        return ensure_rgb(np.asarray(pil))


def _folder_source(root: Path) -> list[SourceIdentity]:
    identities = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        refs = [ImageRef(str(f), lambda f=f: _decode(path=f)) for f in files]
        identities.append(SourceIdentity(folder.name, refs))
    if not identities:
        raise FacesynthError(f"{root}: no identity folders (expected SRC/<identity>/<images>)")
    return identities


def _hf_source(root: Path, config: IngestConfig) -> list[SourceIdentity]:
    import datasets

    try:
        if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(root))
        else:
            ds = datasets.load_dataset(str(root))
    except Exception as exc:  # datasets raises many types for foreign folders
        raise FacesynthError(f"{root}: cannot open as a Hugging Face dataset ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if config.split not in ds:
            raise FacesynthError(f"{root}: no split {config.split!r} (has {sorted(ds)})")
        ds = ds[config.split]
    for column in (config.image_column, config.label_column):
        if column not in ds.column_names:
            raise FacesynthError(f"{root}: no column {column!r} (columns: {ds.column_names})")
    ds = ds.cast_column(config.image_column, datasets.Image(decode=False))
    labels = ds[config.label_column]
    feature = ds.features[config.label_column]
    names = getattr(feature, "names", None)
    groups: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)

    def loader(i: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            cell = ds[i][config.image_column]
            if cell is None:
                raise ValueError("empty image cell")
            if cell.get("bytes") is not None:
                return _decode(data=cell["bytes"])
            return _decode(path=Path(cell["path"]))

        return load

    identities = []
    for label in sorted(groups, key=lambda v: (v is None, v)):
        if label is None:
            continue
        name = names[label] if names and isinstance(label, int) else str(label)
        identities.append(SourceIdentity(name, [ImageRef(f"{root}[{i}]", loader(i)) for i in groups[label]]))
    return identities


def _shard_source(root: Path, allow_plain: bool = False) -> list[SourceIdentity]:
    import pyarrow.parquet as pq

    from facesynth.core.shard_reader import dataset_files, read_columns

    files = dataset_files(root, allow_plain=allow_plain)
    table = read_columns(root, ["label", "identity", "attributes"], allow_plain=allow_plain)
    cache: dict[str, Any] = {}

    def loader(file: Path, row: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if cache.get("file") != file:  # shards are read in order: keep one file's images in memory
                cache.update(
                    file=file, images=pq.read_table(file, columns=["image"]).column("image").to_pylist()
                )
            return _decode(data=cache["images"][row]["bytes"])

        return load

    identities: dict[tuple[int, str], SourceIdentity] = {}
    offset = 0
    labels = table.column("label").to_pylist()
    names = table.column("identity").to_pylist()
    attributes = table.column("attributes").to_pylist()
    for file in files:
        rows = pq.ParquetFile(file).metadata.num_rows
        for row in range(rows):
            key = (labels[offset + row], names[offset + row])
            ident = identities.setdefault(key, SourceIdentity(key[1], []))
            ident.images.append(ImageRef(f"{file}[{row}]", loader(file, row), attributes[offset + row]))
        offset += rows
    return list(identities.values())


def detect_source_kind(root: Path) -> str:
    """``shards`` for a facesynth folder, ``hf`` for a saved dataset, else ``folders``."""
    if (root / MANIFEST_NAME).is_file() or any((root / "data").glob("*.parquet")):
        return "shards"
    if any((root / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
        return "hf"
    return "folders"


def list_source(config: IngestConfig) -> list[SourceIdentity]:
    root = Path(config.source)
    if not root.exists():
        raise FacesynthError(f"{root}: ingest source not found")
    if not root.is_dir():
        raise FacesynthError(f"{root}: ingest source must be a folder")
    kind = detect_source_kind(root) if config.source_kind == "auto" else config.source_kind
    if kind == "folders":
        identities = _folder_source(root)
    elif kind == "hf":
        identities = _hf_source(root, config)
    else:
        identities = _shard_source(root, config.allow_plain_parquet)
    identities = [i for i in identities if len(i.images) >= config.min_images]
    if config.max_identities:
        identities = identities[: config.max_identities]
    if not identities:
        raise FacesynthError(f"{root}: no identity has at least {config.min_images} image(s)")
    return identities


def plan_groups(identities: list[SourceIdentity], rows_per_shard: int) -> list[list[SourceIdentity]]:
    """Consecutive whole identities, about ``rows_per_shard`` listed images per shard."""
    groups: list[list[SourceIdentity]] = [[]]
    count = 0
    for identity in identities:
        if groups[-1] and count + len(identity.images) > rows_per_shard:
            groups.append([])
            count = 0
        groups[-1].append(identity)
        count += len(identity.images)
    return groups


def _batched(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ingest(config: IngestConfig, show_progress: bool = True) -> IngestResult:
    """Run the ingest stage (see the module docstring)."""
    start_time = time.perf_counter()
    out = Path(config.out)
    digest = config_hash(config.content_config())
    if (out / MANIFEST_NAME).is_file():
        manifest = Manifest.read(out)
        if manifest.config_hash == digest:
            logger.info("%s: already ingested with these settings; nothing to do", out)
            return IngestResult(
                out, manifest.num_identities, manifest.num_rows, 0, len(manifest.shards), 0.0, reused=True
            )
        raise FacesynthError(
            f"{out}: holds a dataset made with other settings (config hash {manifest.config_hash}); "
            "choose another --out or delete it"
        )
    if out.exists() and not out.is_dir():
        raise FacesynthError(f"--out {out}: is a file, expected a folder")
    with output_lock(out, "ingest"):
        finish = _read_finish(out / STAGING, digest)
        if finish is not None:  # killed while finishing: complete the recorded moves, report and manifest
            logger.info("%s: completing the finish step of an interrupted ingest", out)
            return _finish(out, finish, start_time)
        if any((out / "data").glob("*.parquet")):
            raise FacesynthError(
                f"{out}: has shards but no {MANIFEST_NAME} (an unfinished or foreign dataset); "
                "delete its data/ folder or choose another --out"
            )
        return _ingest_locked(config, out, digest, start_time, show_progress)


def _ingest_locked(
    config: IngestConfig, out: Path, digest: str, start_time: float, show_progress: bool
) -> IngestResult:
    from tqdm.auto import tqdm

    from facesynth.recognizers.alignment import build_aligner
    from facesynth.recognizers.encoders import load_encoder
    from facesynth.recognizers.face_attributes import FaceAttributeEstimator

    identities = list_source(config)
    aligner = build_aligner(config.aligner, device=config.device, none_mode=config.none_mode)
    encoder = load_encoder(config.encoder, device=config.device) if config.encoder else None
    measure_attributes = FaceAttributeEstimator(config.age_model, device=config.device)
    dim = encoder.embedding_dim if encoder is not None else None
    groups = plan_groups(identities, config.rows_per_shard)
    total = sum(len(i.images) for i in identities)
    skipped: list[dict[str, str]] = []
    # shards are staged under STAGING and moved to data/ at the end, once the number of non-empty
    # shards (the "of-N" in their names) is known
    staging = _open_staging(out / STAGING, digest)
    staged: list[tuple[Path, dict[str, Any]]] = []  # (part file, its sidecar) for non-empty shards
    next_label = 0
    progress = tqdm(total=total, desc="ingest", unit="img", disable=not show_progress)
    reused = 0
    for shard_index, group in enumerate(groups):
        part = staging / f"part-{shard_index:05d}.parquet"
        done = _staged_part(part, label_start=next_label)
        if done is not None:  # finished before an interruption: reuse it
            skipped.extend(done["skipped"])
            progress.update(sum(len(i.images) for i in group))
            if done["rows"]:
                staged.append((part, done))
            next_label = done["label_stop"]
            reused += 1
            continue
        rows: list[ShardRow] = []
        group_skipped: list[dict[str, str]] = []
        label_start = next_label
        for identity in group:
            kept = 0
            for ref in identity.images:
                progress.update(1)
                try:
                    image = ref.load()
                except Exception as exc:  # any decoder failure is a counted skip
                    group_skipped.append(
                        {"item": ref.where, "reason": f"unreadable ({type(exc).__name__}: {exc})"}
                    )
                    continue
                try:
                    face = aligner.align_largest(image)
                except FacesynthError as exc:
                    group_skipped.append({"item": ref.where, "reason": str(exc)})
                    continue
                if face is None:
                    group_skipped.append({"item": ref.where, "reason": "no face found"})
                    continue
                rows.append(
                    ShardRow(
                        image=face.image,
                        label=next_label,
                        identity=identity.name,
                        index=kept,
                        attributes=ref.attributes
                        if ref.attributes is not None
                        else measure_attributes(face, image),
                        landmarks=face.crop_landmarks,
                    )
                )
                kept += 1
            if kept:
                next_label += 1
            else:
                logger.warning("identity %s: every image was skipped; it gets no label", identity.name)
        if encoder is not None:
            for batch in _batched(rows, config.batch_size):
                embeddings = encoder.embed_numpy(
                    np.stack([r.image for r in batch]), batch_size=config.batch_size
                )
                for row, vector in zip(batch, embeddings, strict=True):
                    row.embedding = vector
        if rows:
            write_shard(part, rows_to_table(rows, dim, image_format=config.image_format))
        sidecar = {
            "label_start": label_start,
            "label_stop": next_label,
            "rows": len(rows),
            "sha256": sha256_file(part) if rows else None,
            "skipped": group_skipped,
        }
        write_json_atomic(part.with_suffix(".json"), sidecar)
        if rows:
            staged.append((part, sidecar))
        skipped.extend(group_skipped)
    progress.close()
    if reused:
        logger.info("ingest: reused %d of %d staged shard(s) from an interrupted run", reused, len(groups))
    moves = [
        {
            "part": part.name,
            "file": shard_name(index, len(staged)),
            **{k: info[k] for k in ("label_start", "label_stop", "rows", "sha256")},
        }
        for index, (part, info) in enumerate(staged)
    ]
    report = {
        "source": Path(config.source).name,  # no local paths in what may be published
        "num_listed": total,
        "num_written": sum(m["rows"] for m in moves),
        "num_skipped": len(skipped),
        "num_identities": next_label,
        "skip_reasons": _count_reasons(skipped),
        "skipped": [_public_skip(item, Path(config.source)) for item in skipped],
    }
    if next_label == 0:
        write_json_atomic(out / REPORT_NAME, report)
        raise FacesynthError(
            f"{config.source}: no usable image (all {total} skipped; see {out / REPORT_NAME})"
        )
    manifest = Manifest(
        num_rows=report["num_written"],
        num_identities=next_label,
        embedding_dim=dim,
        image_format=config.image_format,
        config_hash=digest,
        producer={
            "stage": "ingest",
            "aligner": config.aligner,
            "encoder": encoder.description if encoder is not None else None,
            "config": config.content_config(),
        },
        shards=[],
    )
    finish = {"config_hash": digest, "moves": moves, "report": report, "manifest": manifest.to_dict()}
    # recorded before the first move: a run killed from here on is completed by the next one
    write_json_atomic(staging / FINISH_NAME, finish)
    return _finish(out, finish, start_time, skipped=skipped)


FINISH_NAME = "finish.json"


def _public_skip(item: dict[str, str], source: Path) -> dict[str, str]:
    """A skipped item named relative to the source folder (reasons keep no absolute paths either)."""
    where = item["item"]
    prefix = str(source).rstrip("/") + "/"
    return {
        "item": where[len(prefix) :] if where.startswith(prefix) else where,
        "reason": item["reason"].replace(prefix, ""),
    }


def _read_finish(staging: Path, digest: str) -> dict[str, Any] | None:
    try:
        finish = json.loads((staging / FINISH_NAME).read_text())
    except (OSError, ValueError):
        return None
    return finish if isinstance(finish, dict) and finish.get("config_hash") == digest else None


def _finish(
    out: Path,
    finish: dict[str, Any],
    start_time: float,
    reused: bool = False,
    skipped: list[dict[str, str]] | None = None,
) -> IngestResult:
    """Move the staged shards into data/, write the report, then the manifest. Every step can be
    redone, so a run killed anywhere in here is completed by the next one."""
    staging = out / STAGING
    records: list[ShardRecord] = []
    for move in finish["moves"]:
        part, final = staging / move["part"], out / move["file"]
        final.parent.mkdir(parents=True, exist_ok=True)
        if part.is_file():  # a rename keeps the bytes: the staged checksum holds
            os.replace(part, final)
        if not final.is_file() or sha256_file(final) != move["sha256"]:
            raise FacesynthError(
                f"{final}: staged shard missing or changed while finishing; delete {out} and ingest again"
            )
        records.append(
            ShardRecord(move["file"], move["label_start"], move["label_stop"], move["rows"], move["sha256"])
        )
    report = finish["report"]
    write_json_atomic(out / REPORT_NAME, report)
    data = dict(finish["manifest"])
    data["shards"] = [record.__dict__ for record in records]
    write_json_atomic(out / MANIFEST_NAME, data)
    manifest = Manifest.read(out)
    if staging.exists():
        shutil.rmtree(staging)
    seconds = time.perf_counter() - start_time
    logger.info(
        "ingest: %d images of %d identities written, %d skipped (%s)",
        manifest.num_rows,
        manifest.num_identities,
        report["num_skipped"],
        out / REPORT_NAME,
    )
    return IngestResult(
        out,
        manifest.num_identities,
        manifest.num_rows,
        report["num_skipped"],
        len(records),
        seconds,
        skipped if skipped is not None else report["skipped"],
        reused=reused,
    )


def _open_staging(staging: Path, digest: str) -> Path:
    """The staging folder, kept from an interrupted run with the same settings, else emptied."""
    state = staging / "state.json"
    keep = False
    if state.is_file():
        try:
            keep = json.loads(state.read_text()).get("config_hash") == digest
        except (OSError, ValueError):
            keep = False
    if staging.exists() and not keep:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state, {"config_hash": digest})
    return staging


def _staged_part(part: Path, label_start: int) -> dict[str, Any] | None:
    """A staged shard's sidecar when the shard is complete and intact (and starts at ``label_start``)."""
    sidecar = part.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if info.get("label_start") != label_start:
        return None
    intact = not info.get("rows") or (part.is_file() and sha256_file(part) == info.get("sha256"))
    return info if intact else None


def _count_reasons(skipped: list[dict[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in skipped:
        key = item["reason"].split(" (", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return counts
