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
Images are decoded in the DataLoader workers or, for JPEG shards, batched on the training device
(``decode``); :mod:`facesynth.recognizers.input_pipeline` is that path (pinned, non-blocking copies on
CUDA, worker count from the node's cores).

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
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import DataLoader

from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError, FacesynthError, ShardError
from facesynth.core.optim_groups import TrainerOptimizer, build_optimizers, set_learning_rates
from facesynth.core.shard_reader import ShardDataset, sources_have_column
from facesynth.core.training_run import Throughput, TrainingRun, exact_batches
from facesynth.recognizers.encoders import resize_faces, resize_landmarks
from facesynth.recognizers.input_pipeline import (
    batch_to_device,
    check_device_decoding,
    default_num_workers,
    make_loader,
    shard_dataset,
)

logger = logging.getLogger(__name__)


class RecognizerTrainConfig(StageConfig):
    """Settings of ``facesynth train-recognizer`` (defaults: arcface_torch's recipe)."""

    data: list[str] = Field(min_length=1, description="shard dataset folders (or Parquet files) to train on")
    output_dir: str = Field(description="run folder: checkpoints, logs, final weights")
    backbone: str = Field(default="r50", description="registered backbone name (r18, r50, tiny, ...)")
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict, description="backbone constructor options")
    input_size: int | None = Field(default=None, ge=16, description="square input side; None: the backbone's")
    method: str = Field(default="plain", description="recognition method; privacy variants register by name")
    method_kwargs: dict[str, Any] = Field(default_factory=dict, description="method constructor options")
    head: str = Field(default="arcface", description="margin head (arcface, cosface, combined)")
    margin_scale: float = Field(default=64.0, gt=0, description="the head's scale s")
    head_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. {m: 0.4} or {m1:, m2:, m3:}")
    sample_rate: float = Field(default=1.0, gt=0, le=1, description="Partial FC sampling rate")
    batch_size: int = Field(default=128, ge=1, description="per process")
    epochs: int = Field(default=20, ge=1, description="passes over the data (unless max_steps is set)")
    max_steps: int | None = Field(
        default=None, ge=1, description="stop after this many steps (sets the schedule)"
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        default="sgd",
        description="optimizer of the model and class centres (a method may add its own groups)",
    )
    lr: float | None = Field(default=None, gt=0, description="None: 0.1 for SGD, 1e-3 for AdamW")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float | None = Field(default=None, ge=0, description="None: 5e-4 for SGD, 0.1 for AdamW")
    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warm-up length in epochs")
    grad_clip: float = Field(default=5.0, ge=0, description="max grad norm of the model; 0 = off")
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        description="batches per optimizer step (effective batch = batch_size x this x processes)",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(default="no", description="autocast precision")
    flip: bool = Field(default=True, description="random horizontal flips")
    shift: int = Field(
        default=0,
        ge=0,
        description="random translation of up to this many input pixels (reflect padding); 0 = off as in "
        "arcface_torch, a few pixels help small datasets",
    )
    num_workers: int | None = Field(
        default=None,
        ge=0,
        description="DataLoader worker processes per training process; None: 2 on CPU, on CUDA the node's "
        "cores per process less one, at most 12 (input_pipeline.default_num_workers)",
    )
    decode: Literal["workers", "device"] = Field(
        default="workers",
        description="where images are decoded: 'workers' (Pillow in the DataLoader workers, any format) or "
        "'device' (JPEG only: batched torchvision.io.decode_jpeg on the training device, nvJPEG on CUDA; "
        "needs the gpu extra)",
    )
    prefetch_factor: int | None = Field(
        default=None, ge=1, description="batches each worker loads ahead; None: torch's default (2)"
    )
    channels_last: bool = Field(
        default=False, description="channels-last model and inputs (faster convolutions on recent GPUs)"
    )
    model_only: bool = Field(
        default=False,
        description="benchmark: train every step on the first batch, kept on the device (the model's speed "
        "without the input pipeline; the weights are of no use)",
    )
    buffer_size: int = Field(default=1000, ge=1, description="rows in the streaming shuffle buffer")
    seed: int = Field(default=2048, description="seed of weights, data order and augmentation")
    checkpoint_every: int = Field(
        default=1000, ge=0, description="steps between checkpoints; 0 = only at the end"
    )
    keep_checkpoints: int = Field(default=3, ge=1, description="newest checkpoints kept")
    resume: str | None = Field(default=None, description="'latest' or a checkpoint folder")
    log_every: int = Field(default=50, ge=1, description="steps between rows of train_log.csv")
    tensorboard: bool = Field(default=True, description="also write TensorBoard events when it is installed")
    eval_every: int = Field(
        default=0, ge=0, description="steps between verification runs; 0 = only at the end"
    )
    benchmarks: list[str] = Field(default_factory=list, description=".bin files or pairs.txt folders")
    eval_batch_size: int = Field(default=64, ge=1, description="batch size of the verification runs")
    find_unused_parameters: bool = Field(
        default=False, description="DDP option for methods with unused parameters"
    )
    progress: bool = Field(default=True, description="show a progress bar")
    export_onnx: bool = Field(
        default=True,
        description="also write backbone.onnx (dynamic batch) for the plain method; privacy variants skip it",
    )

    calibrate_sensitivity: bool = Field(
        default=False,
        description="before training, set the method's per-coefficient sensitivity from data (DCTDP's "
        "calibrate_sensitivity: each coefficient's range over the calibration images)",
    )
    calibration_data: list[str] | None = Field(
        default=None,
        description="shard folders for calibrate_sensitivity (identity-disjoint); None: the training data",
    )
    calibration_batches: int = Field(default=8, ge=1, description="batches of calibration_data to read")

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
    images = resize_faces(images, size)
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
    points = resize_landmarks(landmarks.detach().float().cpu(), image_size, size).clone()
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


def train_recognizer(config: RecognizerTrainConfig) -> TrainResult:
    """Train a recognizer as configured; returns a summary (the main process has the eval results)."""
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm

    from facesynth.recognizers.heads import build_head
    from facesynth.recognizers.methods import build_method
    from facesynth.recognizers.partial_fc import PartialFC

    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)
    with TrainingRun(
        config.output_dir,
        config=config,
        mixed_precision=config.mixed_precision,
        keep_checkpoints=config.keep_checkpoints,
        tensorboard=config.tensorboard,
        kwargs_handlers=[ddp],
    ) as run:
        accelerator, rank, world, device = run.accelerator, run.rank, run.world, run.accelerator.device
        sources, offsets, num_classes = resolve_sources(config.data)
        if config.decode == "device":
            check_device_decoding(sources)
        num_workers = config.num_workers
        if num_workers is None:
            num_workers = default_num_workers(device)

        # the model starts identical on every process; each process's class centres differ
        set_seed(config.seed)
        method = build_method(
            config.method, config.backbone, config.effective_backbone_kwargs(), **config.method_kwargs
        )
        if config.calibrate_sensitivity:
            _calibrate_sensitivity(method, config)
        input_size = method.input_size
        torch.manual_seed(config.seed + 7919 * (rank + 1))
        head = build_head(config.head, s=config.margin_scale, **config.head_kwargs)
        partial_fc = PartialFC(head, method.embedding_size, num_classes, config.sample_rate).to(device)
        set_seed(config.seed + rank)
        # methods that use per-face landmarks (DuetFace's ROI) get them where every shard stores them
        use_landmarks = getattr(method, "uses_landmarks", False) and sources_have_column(sources, "landmarks")

        dataset = shard_dataset(
            sources,
            config.decode,
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
                f"the {dataset.rows_per_rank()} rows each of the {world} process(es) gets from {sources}"
            )
        total_steps = config.max_steps or steps_per_epoch * config.epochs
        warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

        # optimizers: the trainer's settings plus the groups the method declares (DCTDP's noise: Adam)
        settings = TrainerOptimizer(
            config.optimizer, config.effective_lr(), config.effective_weight_decay(), config.momentum
        )
        optimizers, schedules = build_optimizers(
            method.named_parameters(), method.optimizer_groups(), settings, extra_groups=[[partial_fc.weight]]
        )
        model_params = [p for p in method.parameters() if p.requires_grad]
        if config.channels_last:
            method.to(memory_format=torch.channels_last)
        method, *optimizers = accelerator.prepare(method, *optimizers)

        # checkpoints: accelerate's state + this process's class centres (they differ per process)
        pfc_file = f"partial_fc-rank{rank:05d}-of-{world:05d}.safetensors"
        run.register_hooks(
            save=lambda models, weights, folder: _save_partial_fc(
                partial_fc, optimizers[0], Path(folder) / pfc_file
            ),
            load=None,
        )
        step, epoch, batch_in_epoch, last_loss = 0, 0, 0, float("nan")
        resumed = run.resume(config.resume, expect={"num_classes": (num_classes, "classes")})
        if resumed is not None:
            _load_partial_fc(partial_fc, optimizers[0], resumed["checkpoint"] / pfc_file)
            step, epoch, batch_in_epoch = resumed["step"], resumed["epoch"], resumed["batch_in_epoch"]
            last_loss = float(resumed.get("loss", float("nan")))
        start_step = step
        logger.info(
            "training %s/%s on %d classes, %d steps (%d per epoch), %d process(es), batch %d each"
            " x %d accumulation step(s); %d loader worker(s), decoding on the %s",
            *(config.method, config.backbone, num_classes, total_steps, steps_per_epoch, world),
            *(config.batch_size, accumulate, num_workers, config.decode),
        )
        benchmark_sets = _load_benchmarks(config.benchmarks) if run.is_main else []
        evaluations: list[dict[str, Any]] = []

        def state() -> dict[str, Any]:
            return {
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "num_classes": num_classes,
                "loss": last_loss,
            }

        def evaluate(at_step: int) -> None:  # every process calls this; the main one evaluates
            if benchmark_sets:
                encoder = MethodEncoder(accelerator.unwrap_model(method), device, input_size)
                encoder.method.eval()
                for result in _run_benchmarks(encoder, benchmark_sets, config.eval_batch_size):
                    row = {"benchmark": result["name"], "accuracy": result["accuracy"]}
                    row["accuracy_std"] = result.get("accuracy_std")
                    run.log(row, at_step, file="eval_log.csv")
                    evaluations.append({"step": at_step, **row})
                    logger.info("step %d: %s accuracy %.4f", at_step, result["name"], result["accuracy"])
            run.barrier()

        progress = tqdm(
            total=total_steps, initial=step, disable=not (run.is_main and config.progress), unit="step"
        )
        meter = Throughput()
        fixed_batch = None
        while step < total_steps:
            dataset.set_epoch(epoch)
            loader = make_loader(
                dataset,
                batch_size=config.batch_size,
                num_workers=num_workers,
                device=device,
                seed=config.seed * 1000 + epoch,
                prefetch_factor=config.prefetch_factor,
            )
            batches = exact_batches(loader, config.batch_size)
            if config.model_only:  # the first batch, on the device, at every step: no input pipeline
                if fixed_batch is None:
                    first = next(batches)
                    fixed_batch = {**batch_to_device(first, device), "device_ready": True}
                    if "landmarks" in first:
                        fixed_batch["landmarks"] = first["landmarks"]
                batches = itertools.repeat(fixed_batch)
            for _ in range(batch_in_epoch * accumulate):  # resume mid-epoch: replay the order, skip batches
                next(batches)
            while batch_in_epoch < steps_per_epoch and step < total_steps:
                flip_rng = torch.Generator().manual_seed(
                    (config.seed * 1_000_003 + step * 7919 + rank) % (2**63)
                )
                method.train()
                terms: dict[str, float] = {}  # the step's mean over its micro-batches, term by term
                used = 0
                for batch in itertools.islice(batches, accumulate):
                    on_device = batch if "device_ready" in batch else batch_to_device(batch, device)
                    extra: dict[str, torch.Tensor] = {}
                    if use_landmarks:  # replay the augmentation's draws on the landmarks
                        replay = torch.Generator().set_state(flip_rng.get_state())
                        extra["landmarks"] = augment_landmarks(
                            batch["landmarks"],
                            tuple(on_device["image"].shape[-2:]),
                            input_size,
                            config.flip,
                            replay,
                            config.shift,
                        )
                    images = augment(on_device["image"], input_size, config.flip, flip_rng, config.shift)
                    if config.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    labels = on_device["label"]
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
                    logged = {"loss": loss, "margin_loss": margin_loss}
                    logged.update({f"aux_{k}": v for k, v in aux_losses.items()})
                    for key, value in logged.items():
                        terms[key] = terms.get(key, 0.0) + float(value.detach()) / accumulate
                if used < accumulate:
                    raise ShardError(
                        f"{sources}: epoch {epoch} ended after {batch_in_epoch} of {steps_per_epoch} steps "
                        "(a shard changed or could not be read during training)"
                    )
                if config.grad_clip > 0:
                    accelerator.clip_grad_norm_(model_params, config.grad_clip)
                factor = lr_at(step, 1.0, total_steps, warmup_steps)
                set_learning_rates(optimizers, schedules, factor)
                for optimizer in optimizers:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step, batch_in_epoch, last_loss = step + 1, batch_in_epoch + 1, terms["loss"]
                meter.add(config.batch_size * accumulate * world)
                progress.update(1)
                if step % config.log_every == 0 or step == total_steps:
                    speed = meter.window_rate()
                    row = {
                        "epoch": epoch,
                        "lr": factor * settings.lr,
                        **terms,
                        "images_per_s": round(speed, 2),
                    }
                    run.log(row, step)
                    progress.set_postfix(loss=f"{last_loss:.3f}", lr=f"{row['lr']:.2g}", img_s=f"{speed:.0f}")
                with meter.paused():
                    if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                        run.save_checkpoint(step, state())
                    if config.eval_every and step % config.eval_every == 0 and step < total_steps:
                        evaluate(step)
            if batch_in_epoch >= steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
        progress.close()

        # the end: every process saves the last checkpoint and reaches each barrier
        trained = step > start_step
        speed = meter.total_rate()
        if trained:
            run.save_checkpoint(step, state())
            evaluate(step)
        if run.is_main:
            _save_outputs(accelerator.unwrap_model(method), config, run.run_dir, step, num_classes, sources)
        run.barrier()
        if trained:
            logger.info("finished at step %d: loss %.4f, %.1f images/s", step, last_loss, speed)
        else:
            logger.info("already finished at step %d (of %d); final weights written again", step, total_steps)
        return TrainResult(run.run_dir, step, num_classes, speed, last_loss, evaluations, run.is_main)


def _save_outputs(
    method: Any, config: RecognizerTrainConfig, run_dir: Path, step: int, num_classes: int, sources: list[str]
) -> None:
    """The final weights (backbone + whole method) and, for the plain method, the ONNX export."""
    from facesynth.recognizers.methods import save_method

    metadata = {"step": step, "num_classes": num_classes, "trained_on": list(sources)}
    save_method(method, run_dir, metadata=metadata)
    if config.export_onnx and config.method == "plain":
        from facesynth.recognizers.onnx_export import export_onnx

        export_onnx(
            copy.deepcopy(method.backbone), run_dir / "backbone.onnx", input_size=tuple(method.input_size)
        )


def _save_partial_fc(partial_fc: nn.Module, optimizer: Any, path: Path) -> None:
    """This process's class centres and their optimizer state (they differ per process)."""
    from safetensors.torch import save_file

    inner = getattr(optimizer, "optimizer", optimizer)
    tensors = {"weight": partial_fc.weight.detach().cpu().contiguous()}
    for key, value in inner.state.get(partial_fc.weight, {}).items():
        tensors[f"optim.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(path))


def _load_partial_fc(partial_fc: nn.Module, optimizer: Any, path: Path) -> None:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise FacesynthError(f"{path.parent}: {path.name} is missing (incomplete checkpoint)") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise FacesynthError(f"{path}: unreadable class-centre state ({exc})") from None
    tensors = {k: v.to(partial_fc.weight.device) for k, v in tensors.items()}
    with torch.no_grad():
        partial_fc.weight.copy_(tensors.pop("weight"))
    inner = getattr(optimizer, "optimizer", optimizer)
    inner.state[partial_fc.weight] = {k[len("optim.") :]: v for k, v in tensors.items()}


def _calibrate_sensitivity(method: Any, config: RecognizerTrainConfig) -> None:
    """Run the method's ``calibrate_sensitivity`` on the calibration data (DCTDP), before training."""
    calibrate = getattr(method, "calibrate_sensitivity", None)
    if calibrate is None:
        raise ConfigError(
            f"field 'calibrate_sensitivity': method {config.method!r} has no sensitivity to calibrate"
        )
    sources = config.calibration_data or config.data
    rows = ShardDataset(sources, shuffle=False)
    loader = DataLoader(rows, batch_size=config.batch_size, num_workers=0)
    size = method.input_size
    batches = (
        augment(batch["image"], size, flip=False, generator=None)
        for batch in itertools.islice(loader, config.calibration_batches)
    )
    sensitivity = calibrate(batches)
    logger.info(
        "calibrated the sensitivity on %s: median %.4g, max %.4g",
        sources,
        float(sensitivity.median()),
        float(sensitivity.max()),
    )


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
