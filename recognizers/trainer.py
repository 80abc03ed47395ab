"""Recognizer training: the arcface_torch recipe on Accelerate, reading facesynth shards.

One explicit loop, like arcface_torch's ``train_v2.py`` (docs/reference/ecosystem_brief.md 1.5):
SGD lr 0.1, momentum 0.9, weight decay 5e-4, linear warm-up then linear decay to 0, horizontal-flip
augmentation, gradient-norm clip 5 on the model (not the class centres), ArcFace head with s = 64,
Partial FC for the class centres; AdamW (lr 1e-3, wd 0.1) as the alternative. The same code runs on
one CPU process and under ``accelerate launch`` on many GPUs/nodes (bf16/fp16 autocast through
Accelerate's ``mixed_precision``).

Data: one or more shard folders (real or synthetic) streamed by
:class:`~facesynth.core.shard_reader.ShardDataset`, split by rank and worker. Each folder's
labels are shifted past the previous folders' so mixed datasets keep distinct classes; the number of
classes is read from the label columns. Images are resized to the backbone's input size on the fly.

Run folder (``output_dir``):

- ``train_config.json``: the effective config; ``train.log``; ``train_log.csv`` (step, epoch, lr,
  loss terms, images/s; TensorBoard events in ``tensorboard/`` too when it is installed);
  ``eval_log.csv`` (periodic verification);
- ``checkpoints/checkpoint-<step>/``: ``accelerator.save_state`` (model, optimizer, RNG states) plus
  one ``partial_fc-rank<r>-of-<W>.safetensors`` per process (its class-centre slice and their optimizer
  state, which differ per rank) and ``trainer_state.json``. A checkpoint is written to a ``.partial``
  folder and renamed when complete, so ``--resume latest`` never picks a half-written one.
  Resuming continues the same run exactly (same data order, augmentation, LR, RNG), on the same number
  of processes;
- ``backbone.safetensors`` + ``backbone_config.json`` (what the identity encoders load) and
  ``method.safetensors`` + ``method_config.json`` (the whole method, for privacy variants);
- ``backbone.onnx`` (plain method, dynamic batch, checked against torch) for onnxruntime/insightface.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from facesynth.core.checkpoints import TRAINER_STATE, find_checkpoint, prune_checkpoints
from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError, FacesynthError, ShardError

logger = logging.getLogger(__name__)


class RecognizerTrainConfig(StageConfig):
    """Settings of ``facesynth train-recognizer`` (defaults: arcface_torch's recipe)."""

    data: list[str] = Field(min_length=1, description="shard dataset folders (or Parquet files) to train on")
    output_dir: str = Field(description="run folder: checkpoints, logs, final weights")
    backbone: str = "r50"
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_size: int | None = Field(default=None, ge=16, description="square input side; None: the backbone's")
    method: str = Field(default="plain", description="recognition method; privacy variants register by name")
    method_kwargs: dict[str, Any] = Field(default_factory=dict)
    head: str = "arcface"
    margin_scale: float = Field(default=64.0, gt=0)
    head_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {m: 0.4} or {m1:, m2:, m3:}")
    sample_rate: float = Field(default=1.0, gt=0, le=1, description="Partial FC sampling rate")
    batch_size: int = Field(default=128, ge=1, description="per process")
    epochs: int = Field(default=20, ge=1)
    max_steps: int | None = Field(
        default=None, ge=1, description="stop after this many steps (sets the schedule)"
    )
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float | None = Field(default=None, gt=0, description="None: 0.1 for SGD, 1e-3 for AdamW")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float | None = Field(default=None, ge=0, description="None: 5e-4 for SGD, 0.1 for AdamW")
    warmup_epochs: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=5.0, ge=0, description="max grad norm of the model; 0 = off")
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        description="batches per optimizer step (effective batch = batch_size x this x processes)",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    flip: bool = True
    shift: int = Field(
        default=0,
        ge=0,
        description="random translation of up to this many input pixels (reflect padding); 0 = off as in "
        "arcface_torch, a few pixels help small datasets",
    )
    num_workers: int = Field(default=2, ge=0)
    buffer_size: int = Field(default=1000, ge=1)
    seed: int = 2048
    checkpoint_every: int = Field(
        default=1000, ge=0, description="steps between checkpoints; 0 = only at the end"
    )
    keep_checkpoints: int = Field(default=3, ge=1)
    resume: str | None = Field(default=None, description="'latest' or a checkpoint folder")
    log_every: int = Field(default=50, ge=1)
    tensorboard: bool = Field(default=True, description="also write TensorBoard events when it is installed")
    eval_every: int = Field(
        default=0, ge=0, description="steps between verification runs; 0 = only at the end"
    )
    benchmarks: list[str] = Field(default_factory=list, description=".bin files or pairs.txt folders")
    eval_batch_size: int = Field(default=64, ge=1)
    find_unused_parameters: bool = False
    progress: bool = True
    export_onnx: bool = Field(
        default=True,
        description="also write backbone.onnx (dynamic batch) for the plain method; privacy variants skip it",
    )

    @model_validator(mode="after")
    def _check(self) -> RecognizerTrainConfig:
        if self.input_size is not None and "input_size" in self.backbone_kwargs:
            raise ValueError("give input_size or backbone_kwargs.input_size, not both")
        return self

    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.optimizer == "sgd" else 1e-3)

    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.1

    def effective_backbone_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.backbone_kwargs)
        if self.input_size is not None:
            kwargs["input_size"] = [self.input_size, self.input_size]
        return kwargs


@dataclass
class TrainResult:
    """What a finished run reports."""

    run_dir: Path
    steps: int
    num_classes: int
    images_per_second: float
    final_loss: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    #: False on the other processes of a distributed run (they print nothing)
    is_main_process: bool = True


def resolve_sources(sources: Sequence[str]) -> tuple[list[str], list[int], int]:
    """(sources, label offsets, total classes): each source's classes come after the previous ones'.

    A source's class count is its largest label + 1 (read from the label column only).
    """
    from facesynth.core.shard_reader import read_columns

    offsets, total = [], 0
    for source in sources:
        table = read_columns(source, ["label"])
        if table.num_rows == 0:
            raise ShardError(f"{source}: the dataset has no rows")
        labels = table.column("label").to_numpy()
        if labels.min() < 0:
            raise ShardError(f"{source}: negative label {int(labels.min())}")
        offsets.append(total)
        total += int(labels.max()) + 1
    return list(sources), offsets, total


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return base_lr * max(0.0, 1.0 - (step - warmup_steps) / span)


def lr_groups(method: nn.Module) -> list[dict[str, Any]]:
    """The method's trainable parameters as optimizer groups, one per learning-rate multiplier.

    Multipliers come from ``method.param_lr_multipliers()`` (prefix -> factor, longest prefix wins);
    each group carries its factor as ``lr_scale``. Group order is fixed (factor 1 first, then by
    first appearance), so a checkpoint's optimizer state matches on resume.
    """
    prefixes = sorted(method.param_lr_multipliers().items(), key=lambda item: -len(item[0]))
    groups: dict[float, list[nn.Parameter]] = {1.0: []}
    for name, param in method.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((float(f) for prefix, f in prefixes if name.startswith(prefix)), 1.0)
        groups.setdefault(scale, []).append(param)
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items() if params]


def augment(
    images: torch.Tensor,
    size: tuple[int, int],
    flip: bool,
    generator: torch.Generator | None,
    shift: int = 0,
) -> torch.Tensor:
    """Resize to ``size``, random horizontal flip (p = 0.5) and random shifts of up to ``shift`` pixels.

    The randomness comes from ``generator`` only, so a resumed run augments exactly like the original.
    """
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    if flip:
        mask = torch.rand(images.shape[0], generator=generator) < 0.5
        mask = mask.to(images.device)
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    if shift > 0:
        height, width = images.shape[-2:]
        padded = F.pad(images, (shift, shift, shift, shift), mode="reflect")
        offsets = torch.randint(0, 2 * shift + 1, (images.shape[0], 2), generator=generator).tolist()
        images = torch.stack(
            [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)]
        )
    return images


def augment_landmarks(
    landmarks: torch.Tensor,
    image_size: tuple[int, int],
    size: tuple[int, int],
    flip: bool,
    generator: torch.Generator | None,
    shift: int = 0,
) -> torch.Tensor:
    """Move (B, K, 2) pixel landmarks as :func:`augment` moved their images.

    ``generator`` must be in the state :func:`augment` started from (a copy taken before it ran):
    the same draws then give the same flips and shifts. NaN (unknown) landmarks stay NaN.
    """
    points = landmarks.detach().float().cpu().clone()
    if tuple(image_size) != tuple(size):
        scale = torch.tensor([size[1] / image_size[1], size[0] / image_size[0]])
        points = (points + 0.5) * scale - 0.5
    height, width = size
    if flip:
        mask = torch.rand(points.shape[0], generator=generator) < 0.5
        flipped = points.clone()
        flipped[..., 0] = (width - 1) - flipped[..., 0]
        points = torch.where(mask[:, None, None], flipped, points)
    if shift > 0:
        offsets = torch.randint(0, 2 * shift + 1, (points.shape[0], 2), generator=generator)
        points[..., 0] -= (offsets[:, 1:2] - shift).float()
        points[..., 1] -= (offsets[:, 0:1] - shift).float()
    return points


def exact_batches(loader: Iterable[dict[str, Any]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Re-cut a loader's batches into exactly ``batch_size`` rows (the remainder is dropped).

    With an IterableDataset each DataLoader worker batches its own rows, so ``drop_last`` would drop a
    partial batch per worker; merging them keeps ``rows // batch_size`` batches per epoch, which Partial
    FC's equal-batch rule and the even per-rank split need.
    """
    pending: dict[str, torch.Tensor] | None = None
    for batch in loader:
        part = {k: v for k, v in batch.items() if k in ("image", "label", "landmarks")}
        pending = part if pending is None else {k: torch.cat([pending[k], part[k]]) for k in part}
        while pending["label"].shape[0] >= batch_size:
            yield {k: v[:batch_size] for k, v in pending.items()}
            pending = {k: v[batch_size:] for k, v in pending.items()}


class _CsvLog:
    """Append rows to a CSV file whose header is fixed by the first row (or the existing file)."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with path.open(newline="") as handle:
                self.fields = next(csv.reader(handle), None)

    def write(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(self.fields)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore").writerow(row)


class MethodEncoder:
    """Duck-typed identity encoder over a method, for :mod:`facesynth.recognizers.verification`."""

    differentiable = True

    def __init__(self, method, device: torch.device, input_size: tuple[int, int]):
        self.method, self.device, self.input_size = method, device, input_size

    @property
    def embedding_dim(self) -> int:
        return self.method.embedding_size

    @torch.no_grad()
    def embed(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        images = augment(images.to(self.device).float(), self.input_size, flip=False, generator=None)
        out = self.method.embed(images).float()
        return F.normalize(out, dim=1) if normalize else out


def _optimizer_state_tensors(
    optimizer: torch.optim.Optimizer, param: torch.Tensor
) -> dict[str, torch.Tensor]:
    state = optimizer.state.get(param, {})
    return {f"optim.{k}": torch.as_tensor(v).detach().cpu().contiguous() for k, v in state.items()}


def train_recognizer(config: RecognizerTrainConfig) -> TrainResult:
    """Train a recognizer as configured; returns a summary (the main process has the eval results)."""
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from safetensors.torch import load_file, save_file
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from facesynth.core.accelerator import make_accelerator
    from facesynth.core.shard_reader import ShardDataset, sources_have_column
    from facesynth.recognizers.heads import build_head
    from facesynth.recognizers.methods import build_method, save_method
    from facesynth.recognizers.partial_fc import PartialFC

    run_dir = Path(config.output_dir)
    accelerator = make_accelerator(
        config.mixed_precision,
        project_config=ProjectConfiguration(project_dir=str(run_dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)],
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("facesynth").addHandler(handler)
    try:
        sources, offsets, num_classes = resolve_sources(config.data)
        set_seed(config.seed)
        method = build_method(
            config.method, config.backbone, config.effective_backbone_kwargs(), **config.method_kwargs
        )
        input_size = method.input_size
        torch.manual_seed(config.seed + 7919 * (rank + 1))  # distinct, reproducible centre init per rank
        head = build_head(config.head, s=config.margin_scale, **config.head_kwargs)
        partial_fc = PartialFC(head, method.embedding_size, num_classes, config.sample_rate).to(
            accelerator.device
        )
        set_seed(config.seed + rank)
        # methods that use per-face landmarks (DuetFace's ROI) get them where every shard stores them
        use_landmarks = getattr(method, "uses_landmarks", False) and sources_have_column(sources, "landmarks")

        dataset = ShardDataset(
            sources,
            rank=rank,
            world_size=world,
            shuffle=True,
            seed=config.seed,
            buffer_size=config.buffer_size,
            label_offsets=offsets,
            columns=["landmarks"] if use_landmarks else None,
        )
        accumulate = config.gradient_accumulation_steps
        steps_per_epoch = dataset.rows_per_rank() // (config.batch_size * accumulate)
        if steps_per_epoch < 1:
            raise ConfigError(
                f"field 'batch_size': {config.batch_size} x {accumulate} accumulation step(s) is larger than "
                f"the {dataset.rows_per_rank()} rows "
                f"each of the {world} process(es) gets from {sources}"
            )
        total_steps = config.max_steps or steps_per_epoch * config.epochs
        warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
        base_lr = config.effective_lr()

        model_params = [p for p in method.parameters() if p.requires_grad]
        groups = [*lr_groups(method), {"params": [partial_fc.weight], "lr_scale": 1.0}]
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, lr=base_lr, momentum=config.momentum, weight_decay=config.effective_weight_decay()
            )
        else:
            optimizer = torch.optim.AdamW(groups, lr=base_lr, weight_decay=config.effective_weight_decay())
        method, optimizer = accelerator.prepare(method, optimizer)

        step, epoch, batch_in_epoch = 0, 0, 0
        pfc_file = f"partial_fc-rank{rank:05d}-of-{world:05d}.safetensors"
        if config.resume:
            checkpoint = find_checkpoint(run_dir, config.resume)
            if checkpoint is None:
                logger.info("no checkpoint in %s/checkpoints; starting a new run", run_dir)
            else:
                state = json.loads((checkpoint / TRAINER_STATE).read_text())
                if state["num_classes"] != num_classes or state["world_size"] != world:
                    raise FacesynthError(
                        f"{checkpoint}: checkpoint has {state['num_classes']} classes on {state['world_size']} "
                        f"process(es); this run has {num_classes} on {world} (resume needs the same data and "
                        "process count)"
                    )
                try:
                    accelerator.load_state(str(checkpoint))
                except (RuntimeError, KeyError, ValueError) as exc:
                    raise FacesynthError(
                        f"{checkpoint}: checkpoint does not match this model ({exc})"
                    ) from None
                try:
                    tensors = load_file(str(checkpoint / pfc_file))
                except FileNotFoundError:
                    raise FacesynthError(
                        f"{checkpoint}: {pfc_file} is missing (incomplete checkpoint)"
                    ) from None
                tensors = {k: v.to(accelerator.device) for k, v in tensors.items()}
                with torch.no_grad():
                    partial_fc.weight.copy_(tensors.pop("weight"))
                inner = getattr(optimizer, "optimizer", optimizer)
                inner.state[partial_fc.weight] = {k[len("optim.") :]: v for k, v in tensors.items()}
                step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
                logger.info(
                    "resumed from %s at step %d (epoch %d, batch %d)", checkpoint, step, epoch, batch_in_epoch
                )

        if main:
            (run_dir / "train_config.json").write_text(json.dumps(config.to_json_dict(), indent=2) + "\n")
            logger.info(
                "training %s/%s on %d classes, %d steps (%d per epoch), %d process(es), batch %d each"
                " x %d accumulation step(s)",
                config.method,
                config.backbone,
                num_classes,
                total_steps,
                steps_per_epoch,
                world,
                config.batch_size,
                accumulate,
            )

        csv_log = _CsvLog(run_dir / "train_log.csv") if main else None
        eval_log = _CsvLog(run_dir / "eval_log.csv") if main else None
        writer = None
        if main and config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                logger.info("tensorboard is not installed; logging to CSV only")
        benchmark_sets = _load_benchmarks(config.benchmarks) if main else []
        evaluations: list[dict[str, Any]] = []

        def checkpoint_now(at_step: int) -> None:
            folder = run_dir / "checkpoints" / f"checkpoint-{at_step}"
            partial = folder.with_name(folder.name + ".partial")
            if main and partial.exists():
                shutil.rmtree(partial)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(partial))
            inner = getattr(optimizer, "optimizer", optimizer)
            tensors = {"weight": partial_fc.weight.detach().cpu().contiguous()}
            tensors.update(_optimizer_state_tensors(inner, partial_fc.weight))
            save_file(tensors, str(partial / pfc_file))
            accelerator.wait_for_everyone()
            if main:
                state = {
                    "step": at_step,
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "num_classes": num_classes,
                    "world_size": world,
                }
                (partial / TRAINER_STATE).write_text(json.dumps(state, indent=2) + "\n")
                if folder.exists():
                    shutil.rmtree(folder)
                partial.rename(folder)
                prune_checkpoints(folder.parent, config.keep_checkpoints)
            accelerator.wait_for_everyone()

        def evaluate_now(at_step: int) -> None:
            if main and benchmark_sets:
                encoder = MethodEncoder(accelerator.unwrap_model(method), accelerator.device, input_size)
                encoder.method.eval()
                for result in _run_benchmarks(encoder, benchmark_sets, config.eval_batch_size):
                    row = {"step": at_step, "benchmark": result["name"], "accuracy": result["accuracy"]}
                    row["accuracy_std"] = result.get("accuracy_std")
                    eval_log.write(row)
                    evaluations.append(row)
                    if writer is not None:
                        writer.add_scalar(f"eval/{result['name']}/accuracy", result["accuracy"], at_step)
                    logger.info("step %d: %s accuracy %.4f", at_step, result["name"], result["accuracy"])
            accelerator.wait_for_everyone()

        progress = tqdm(
            total=total_steps,
            initial=step,
            disable=not (main and config.progress),
            desc="train-recognizer",
            unit="step",
        )
        window_start, window_images = time.perf_counter(), 0
        run_start, run_images, run_start_step = time.perf_counter(), 0, step
        last_loss = float("nan")
        device = accelerator.device
        while step < total_steps:
            dataset.set_epoch(epoch)
            loader = DataLoader(
                dataset,
                batch_size=config.batch_size,
                num_workers=config.num_workers,
                drop_last=False,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(config.seed * 1000 + epoch),
            )
            batches: Iterator[dict[str, Any]] = exact_batches(loader, config.batch_size)
            for _ in range(batch_in_epoch * accumulate):  # resume mid-epoch: replay the order, skip batches
                next(batches)
            while batch_in_epoch < steps_per_epoch and step < total_steps:
                flip_rng = torch.Generator().manual_seed(
                    (config.seed * 1_000_003 + step * 7919 + rank) % (2**63)
                )
                method.train()
                step_loss, used = 0.0, 0
                for batch in itertools.islice(batches, accumulate):
                    images = batch["image"].to(device, non_blocking=True)
                    labels = batch["label"].to(device, non_blocking=True)
                    extra: dict[str, torch.Tensor] = {}
                    if use_landmarks:
                        replay = torch.Generator().set_state(flip_rng.get_state())
                        extra["landmarks"] = augment_landmarks(
                            batch["landmarks"],
                            tuple(images.shape[-2:]),
                            input_size,
                            config.flip,
                            replay,
                            config.shift,
                        )
                    images = augment(images, input_size, config.flip, flip_rng, config.shift)
                    used += 1
                    # gradients sync across processes only on the step's last batch
                    with accelerator.no_sync(method) if used < accumulate else contextlib.nullcontext():
                        embeddings, aux_losses = method(images, labels, **extra)
                        margin_loss = partial_fc(embeddings, labels)
                        loss = margin_loss + sum(aux_losses.values()) if aux_losses else margin_loss
                        if not torch.isfinite(loss):
                            raise FacesynthError(
                                f"step {step}: the loss is {loss.item()} (lower the learning rate, "
                                "or use bf16 instead of fp16)"
                            )
                        accelerator.backward(loss / accumulate)
                    step_loss += float(loss.detach()) / accumulate
                if used < accumulate:
                    raise ShardError(
                        f"{sources}: epoch {epoch} ended after {batch_in_epoch} of {steps_per_epoch} steps "
                        "(a shard changed or could not be read during training)"
                    )
                if config.grad_clip > 0:
                    accelerator.clip_grad_norm_(model_params, config.grad_clip)
                lr = lr_at(step, base_lr, total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                batch_in_epoch += 1
                window_images += config.batch_size * accumulate * world
                run_images += config.batch_size * accumulate * world
                last_loss = step_loss
                progress.update(1)
                if step % config.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    speed = window_images / max(elapsed, 1e-9)
                    row = {"step": step, "epoch": epoch, "lr": lr, "loss": last_loss}
                    row["margin_loss"] = float(margin_loss.detach())
                    row.update({f"aux_{k}": float(v.detach()) for k, v in aux_losses.items()})
                    row["images_per_s"] = round(speed, 2)
                    if main:
                        csv_log.write(row)
                        if writer is not None:
                            for key, value in row.items():
                                if key not in ("step", "epoch"):
                                    writer.add_scalar(f"train/{key}", value, step)
                        progress.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2g}", img_s=f"{speed:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                paused = time.perf_counter()
                if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                    checkpoint_now(step)
                if config.eval_every and step % config.eval_every == 0 and step < total_steps:
                    evaluate_now(step)
                pause = (
                    time.perf_counter() - paused
                )  # checkpoints and evaluation do not count as training time
                window_start += pause
                run_start += pause
            if batch_in_epoch >= steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
        progress.close()
        total_time = time.perf_counter() - run_start
        checkpoint_now(step)
        evaluate_now(step)
        if main:
            save_method(
                accelerator.unwrap_model(method),
                run_dir,
                metadata={"step": step, "num_classes": num_classes, "trained_on": list(sources)},
            )
            if config.export_onnx and config.method == "plain":
                from facesynth.recognizers.onnx_export import export_onnx

                backbone = copy.deepcopy(accelerator.unwrap_model(method).backbone)
                export_onnx(backbone, run_dir / "backbone.onnx", input_size=tuple(input_size))
            if writer is not None:
                writer.close()
        accelerator.wait_for_everyone()
        speed = run_images / total_time if step > run_start_step and total_time > 0 else 0.0
        logger.info("finished at step %d: loss %.4f, %.1f images/s", step, last_loss, speed)
        return TrainResult(run_dir, step, num_classes, speed, last_loss, evaluations, main)
    finally:
        if main:
            for h in list(logging.getLogger("facesynth").handlers):
                if (
                    isinstance(h, logging.FileHandler)
                    and Path(h.baseFilename) == (run_dir / "train.log").resolve()
                ):
                    logging.getLogger("facesynth").removeHandler(h)
                    h.close()


def _load_benchmarks(specs: Sequence[str]) -> list[Any]:
    if not specs:
        return []
    from facesynth.recognizers.benchmark_files import load_verification_set

    return [load_verification_set(spec) for spec in specs]


def _run_benchmarks(encoder: MethodEncoder, sets: Sequence[Any], batch_size: int) -> list[dict[str, Any]]:
    from facesynth.recognizers.verification import evaluate_benchmark

    results = []
    for benchmark in sets:
        result = evaluate_benchmark(encoder, benchmark, batch_size=batch_size)
        results.append({k: v for k, v in result.items() if k not in ("fpr", "tpr")})
    return results
