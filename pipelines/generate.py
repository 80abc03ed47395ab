"""The ``generate`` stage: sharded, deterministic, resumable synthetic dataset generation.

Identities are cut into shards of contiguous label ranges, fixed up front so shard names
(``train-00017-of-00042``) never change. Every image is seeded from (global seed, label, index),
so the dataset does not depend on the number of processes, on batching, or on restarts.

Under ``accelerate launch`` / ``torchrun`` each process computes the same list of unfinished shards
(behind a barrier), takes its slice with ``PartialState.split_between_processes`` and writes its own
shards. Shards are written atomically, so after a crash a rerun reuses complete shards and redoes
the rest; the main process writes the manifest last.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import Field

from facesynth.core.accelerator import partial_state
from facesynth.core.atomic_io import TMP_SUFFIX, config_hash, sha256_file, write_json_atomic
from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError, ShardError
from facesynth.core.locks import check_job_lock, output_lock
from facesynth.core.manifest import Manifest, ShardRecord, manifest_exists
from facesynth.core.ownership import written_by_facesynth
from facesynth.core.shard_format import (
    DATA_DIR,
    ShardRow,
    check_schema,
    encode_images,
    read_schema,
    rows_to_table,
    shard_name,
    write_shard,
)
from facesynth.generators.registry import FaceGenerator, SampleRequest, build_generator, sample_seed

logger = logging.getLogger(__name__)

STATE_DIR = ".facesynth"  # plan, per-shard checksums and the log; ignored by publish


#: at most this many images per process are encoded on a thread rather than in a spawned process
#: (spawning re-imports the caller's modules, seconds that 1,000 small images do not repay)
IN_PROCESS_ENCODING_ROWS = 1000


class GenerateConfig(StageConfig):
    """Settings of ``facesynth generate``."""

    generator: str = "parametric"
    identities: int = Field(gt=0, description="number of identities (classes) N")
    per_identity: int = Field(gt=0, description="images per identity M")
    out: Path
    seed: int = Field(default=0, ge=0)
    shard_size: int = Field(default=5000, gt=0, description="target images per shard (whole identities)")
    image_format: Literal["png", "jpeg"] = "png"
    batch_size: int | None = Field(default=None, gt=0, description="requests per generator call")
    options: dict[str, Any] = Field(default_factory=dict, description="generator-specific options")
    allow_non_empty_out: bool = Field(
        default=False,
        description="write into an --out folder that already holds files of your own (they are left alone)",
    )

    def identities_per_shard(self) -> int:
        return max(1, self.shard_size // self.per_identity)

    def num_shards(self) -> int:
        return math.ceil(self.identities / self.identities_per_shard())

    def dataset_config(self) -> dict[str, Any]:
        """The fields that define the dataset's content (``out`` and ``batch_size`` do not)."""
        return self.to_json_dict() | {"out": None, "batch_size": None, "allow_non_empty_out": None}


#: Most bytes of per-identity state a generator may be asked to hold (ID3 keeps a 512-d float32 anchor per
#: identity, plus bookkeeping): 8 GiB, i.e. about 4 million identities.
MAX_IDENTITY_STATE_BYTES = 8 * 2**30
IDENTITY_STATE_BYTES = 2048
#: Most rows one shard may hold: a shard is assembled in memory (about 20 kB per encoded 112x112 PNG).
MAX_SHARD_ROWS = 100_000
#: Files and folders the generate stage itself writes in ``--out`` (anything else is the user's).
OWN_ENTRIES = frozenset({DATA_DIR, STATE_DIR, "facesynth.json", "README.md", "figures"})


@dataclass(frozen=True)
class ShardPlan:
    index: int
    file: str
    label_start: int
    label_stop: int
    num_rows: int


@dataclass
class GenerateResult:
    out: Path
    num_shards: int
    shards_written: int
    shards_reused: int
    images_written: int
    seconds: float
    manifest: Manifest | None

    @property
    def images_per_second(self) -> float:
        return self.images_written / self.seconds if self.seconds > 0 else 0.0


def plan_shards(config: GenerateConfig) -> list[ShardPlan]:
    """The fixed shard layout of a dataset: contiguous label ranges of whole identities."""
    per_shard, count = config.identities_per_shard(), config.num_shards()
    plans = []
    for index in range(count):
        start = index * per_shard
        stop = min(config.identities, start + per_shard)
        plans.append(
            ShardPlan(index, shard_name(index, count), start, stop, (stop - start) * config.per_identity)
        )
    return plans


def check_request_size(config: GenerateConfig) -> None:
    """Refuse requests whose per-identity state alone would exceed :data:`MAX_IDENTITY_STATE_BYTES`."""
    need = config.identities * IDENTITY_STATE_BYTES
    if need > MAX_IDENTITY_STATE_BYTES:
        raise FacesynthError(
            f"--identities {config.identities:,}: the generator would hold about {need / 2**30:,.0f} GiB of "
            f"per-identity state, above the bound of {MAX_IDENTITY_STATE_BYTES / 2**30:.0f} GiB "
            f"({MAX_IDENTITY_STATE_BYTES // IDENTITY_STATE_BYTES:,} identities); generate in several datasets"
        )
    rows = config.identities_per_shard() * config.per_identity
    if rows > MAX_SHARD_ROWS:
        raise FacesynthError(
            f"--per-identity {config.per_identity:,} / --shard-size {config.shard_size:,}: a shard would hold "
            f"{rows:,} images (about {rows * 20 / 1e6:,.1f} GB in memory while it is written), above the bound "
            f"of {MAX_SHARD_ROWS:,} images per shard"
        )


def check_output_folder(config: GenerateConfig) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not a facesynth dataset."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise FacesynthError(f"--out {out}: is a file, expected a folder")
    if not out.is_dir() or config.allow_non_empty_out:
        return
    if (out / STATE_DIR / "plan.json").is_file() or manifest_exists(out):
        return  # our own dataset (finished or being resumed)
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in OWN_ENTRIES or (p.name == "README.md" and not written_by_facesynth(p))
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FacesynthError(
            f"--out {out}: folder is not empty and is not a facesynth dataset (holds {shown}); "
            "use a new folder, or set allow_non_empty_out (--allow-non-empty-out) to write beside those files"
        )


def _shard_is_complete(out: Path, plan: ShardPlan) -> bool:
    """A shard is reusable if it is a readable v1 shard with the planned rows and its recorded checksum."""
    path = out / plan.file
    if not path.is_file():
        return False
    try:
        check_schema(path, read_schema(path))
        if pq.ParquetFile(path).metadata.num_rows != plan.num_rows:
            return False
    except (ShardError, OSError, ValueError):
        return False
    sidecar = _sidecar_path(out, plan)
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text())["sha256"] == sha256_file(path)
        except (json.JSONDecodeError, KeyError):
            return False
    return True


def _sidecar_path(out: Path, plan: ShardPlan) -> Path:
    return out / STATE_DIR / "shards" / (Path(plan.file).stem + ".json")


def _prepare_output(config: GenerateConfig, is_main: bool) -> None:
    """Create the folder, check it is writable and belongs to this config, clear stale temp files."""
    out = config.out
    digest = config_hash(config.dataset_config())
    plan_file = out / STATE_DIR / "plan.json"
    if not is_main:
        return
    try:
        (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
        (out / STATE_DIR / "shards").mkdir(parents=True, exist_ok=True)
        probe = out / STATE_DIR / f".write-probe{TMP_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FacesynthError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    if plan_file.is_file():
        recorded = json.loads(plan_file.read_text()).get("config_hash")
        if recorded != digest:
            raise FacesynthError(
                f"{out}: folder holds a different dataset (config hash {recorded} != {digest}); "
                "use a new --out folder or delete this one"
            )
    elif any((out / DATA_DIR).glob("*.parquet")):
        raise FacesynthError(
            f"{out}: folder already holds shards not made by this command; use a new --out folder"
        )
    else:
        write_json_atomic(plan_file, {"config_hash": digest, "config": config.dataset_config()})
    for stale in (out / DATA_DIR).glob(f".*{TMP_SUFFIX}"):
        stale.unlink()  # half-written shards of a crashed run


def _requests(config: GenerateConfig, plan: ShardPlan) -> Iterator[SampleRequest]:
    """The shard's requests, lazily: memory stays at one batch whatever ``per_identity`` is."""
    for label in range(plan.label_start, plan.label_stop):
        for index in range(config.per_identity):
            yield SampleRequest(label=label, index=index, seed=sample_seed(config.seed, label, index))


def identity_name(config: GenerateConfig, label: int) -> str:
    """Stable identity id: generator, dataset seed and label."""
    return f"{config.generator}-s{config.seed}-{label:07d}"


class _ShardWriter:
    """Encodes images in a helper process and writes finished shards on a background thread.

    Generation (the caller) runs ahead while PNG/JPEG encoding and Parquet writing happen behind
    it. Encoding runs in its own process because Pillow's encoders hold the GIL: in a thread they
    would stall a CPU-bound generator. ``close`` waits for everything and re-raises the first error.
    """

    def __init__(
        self, config: GenerateConfig, out: Path, embedding_dim: int | None, encode_processes: int = 1
    ):
        self.config, self.out, self.embedding_dim = config, out, embedding_dim
        self.encoder_pool: Executor
        if encode_processes > 0:
            self.encoder_pool = ProcessPoolExecutor(
                max_workers=encode_processes, mp_context=multiprocessing.get_context("spawn")
            )
        else:  # small datasets: a spawned process re-imports torch & co., costing more than the encoding
            self.encoder_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-encoder")
        self.encoder_pool.submit(encode_images, [], config.image_format)  # start the process now
        self.jobs: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="shard-writer", daemon=True)
        self.thread.start()

    def encode_async(self, images: list) -> Future:
        """Start encoding one batch; the future yields its bytes in order."""
        return self.encoder_pool.submit(encode_images, images, self.config.image_format)

    def submit(self, plan: ShardPlan, rows: list[ShardRow], encoded: list) -> None:
        if self.error:
            raise self.error
        self.jobs.put((plan, rows, encoded))

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error:
                continue
            plan, rows, encoded = job
            try:
                images = [data for future in encoded for data in future.result()]
                for row, data in zip(rows, images, strict=True):
                    row.image = data
                path = self.out / plan.file
                write_shard(path, rows_to_table(rows, self.embedding_dim, self.config.image_format))
                record = ShardRecord(
                    plan.file, plan.label_start, plan.label_stop, len(rows), sha256_file(path)
                )
                write_json_atomic(_sidecar_path(self.out, plan), record.__dict__)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller in close()
                self.error = exc

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        self.encoder_pool.shutdown(wait=True)
        if self.error:
            raise self.error


def _batched(items, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _generate_shard(
    generator: FaceGenerator, config: GenerateConfig, plan: ShardPlan, writer: _ShardWriter, progress
) -> int:
    rows: list[ShardRow] = []
    encoded: list = []
    batch_size = config.batch_size or generator.batch_size
    for batch in _batched(_requests(config, plan), batch_size):
        faces = generator.generate(batch)
        if len(faces) != len(batch):
            raise FacesynthError(
                f"generator {config.generator!r} returned {len(faces)} faces for {len(batch)} requests"
            )
        encoded.append(writer.encode_async([face.image for face in faces]))
        for request, face in zip(batch, faces, strict=True):
            rows.append(
                ShardRow(
                    image=b"",  # filled in by the writer once encoded
                    label=request.label,
                    identity=identity_name(config, request.label),
                    index=request.index,
                    seed=request.seed,
                    embedding=face.embedding,
                    attributes=face.attributes,
                    anchor_cos=face.anchor_cos,
                    id_cos=face.id_cos,
                    landmarks=face.landmarks,
                )
            )
        if progress is not None:
            progress.update(len(batch))
    writer.submit(plan, rows, encoded)
    return len(rows)


def _write_manifest(config: GenerateConfig, plans: list[ShardPlan], generator: FaceGenerator) -> Manifest:
    records = []
    for plan in plans:
        path = config.out / plan.file
        if not _shard_is_complete(config.out, plan):
            raise ShardError(f"{path}: shard missing or incomplete after generation")
        sidecar = _sidecar_path(config.out, plan)
        digest = json.loads(sidecar.read_text())["sha256"] if sidecar.is_file() else sha256_file(path)
        records.append(ShardRecord(plan.file, plan.label_start, plan.label_stop, plan.num_rows, digest))
    manifest = Manifest(
        num_rows=sum(r.num_rows for r in records),
        num_identities=config.identities,
        embedding_dim=generator.embedding_dim,
        image_format=config.image_format,
        config_hash=config_hash(config.dataset_config()),
        producer={
            "stage": "generate",
            "generator": config.generator,
            "generator_config": generator.config(),
            "config": config.dataset_config(),
        },
        shards=records,
    )
    manifest.write(config.out)
    return manifest


def generate_dataset(config: GenerateConfig, *, show_progress: bool = True) -> GenerateResult:
    """Generate (or finish generating) the dataset described by ``config`` into ``config.out``.

    Safe to call again after a crash: complete shards are reused and missing ones are made. Runs
    as one process or under ``accelerate launch`` / ``torchrun`` with one call per process.
    """
    state = partial_state()
    out = config.out
    started = time.perf_counter()
    # everything that can be wrong with the request is checked before anything is created
    check_request_size(config)
    plans = plan_shards(config)
    generator = build_generator(
        config.generator,
        num_identities=config.identities,
        seed=config.seed,
        device=state.device,
        **config.options,
    )
    check_output_folder(config)
    if manifest_exists(out):
        manifest = Manifest.read(out)
        if manifest.config_hash == config_hash(config.dataset_config()):
            logger.info("%s is already complete (%d rows); nothing to do", out, manifest.num_rows)
            return GenerateResult(out, len(plans), 0, len(plans), 0, 0.0, manifest)
        raise FacesynthError(f"{out}: holds a finished dataset with another config; use a new --out folder")
    with output_lock(out, "generate", is_main_process=state.is_main_process):
        return _generate_locked(config, state, plans, generator, started, show_progress)


def _generate_locked(
    config: GenerateConfig,
    state,
    plans: list[ShardPlan],
    generator: FaceGenerator,
    started: float,
    show_progress: bool,
) -> GenerateResult:
    from tqdm.auto import tqdm

    out = config.out
    _prepare_output(config, state.is_main_process)
    state.wait_for_everyone()
    if not state.is_main_process:
        check_job_lock(out)
    if not (out / STATE_DIR / "plan.json").is_file():
        raise FacesynthError(
            f"{out}: output folder was not prepared (is it on a filesystem every process sees?)"
        )
    pending = [plan for plan in plans if not _shard_is_complete(out, plan)]
    state.wait_for_everyone()  # every rank has listed the same pending shards before anyone writes
    reused = len(plans) - len(pending)
    if state.is_main_process:
        logger.info(
            "%d shards planned, %d complete, %d to generate on %d process(es)",
            len(plans),
            reused,
            len(pending),
            state.num_processes,
        )

    images = 0
    with state.split_between_processes(pending) as my_plans:
        total = sum(p.num_rows for p in my_plans)
        progress = tqdm(
            total=total,
            unit="img",
            desc=f"generate[{state.process_index}]",
            disable=not show_progress or not state.is_local_main_process,
        )
        encode_processes = 0 if total <= IN_PROCESS_ENCODING_ROWS else 1
        writer = _ShardWriter(config, out, generator.embedding_dim, encode_processes)
        try:
            for plan in my_plans:
                images += _generate_shard(generator, config, plan, writer, progress)
        finally:
            progress.close()
            writer.close()
    state.wait_for_everyone()
    manifest = _write_manifest(config, plans, generator) if state.is_main_process else None
    state.wait_for_everyone()
    return GenerateResult(
        out, len(plans), len(pending), reused, images, time.perf_counter() - started, manifest
    )
