"""Train an ID3 model on shards and write an :class:`~facesynth.generators.id3_pipeline.ID3Pipeline` folder.

A plain, explicit loop in the style of diffusers' training examples: Accelerate for devices,
multi-GPU/multi-node and mixed precision; AdamW with a diffusers LR schedule; gradient accumulation;
EMA of the trainable weights (``diffusers.training_utils.EMAModel``); ``accelerator.save_state``
checkpoints that resume exactly; a CSV log with every loss term; sample grids (PNG); and the final
pipeline saved with ``save_pretrained`` using the EMA weights.

Data: shard datasets with an ``embedding`` column (the condition y; rows are L2-normalised here, and
the count of rows that were not is logged) and the ``attributes`` struct. Rows whose attributes are
null get neutral values (frontal pose, age 35); landmarks are not stored in shards, so nothing is
estimated from them; the trainer logs how many values were filled.

Exact resume: all randomness of a step (noise, timesteps, condition dropout, VAE sampling) is drawn
from a generator seeded by (seed, micro-step, rank), and the data order is a function of (seed, epoch),
so a resumed run replays the same batches and noise as an uninterrupted one.

Run folder layout::

    OUTPUT/train.log            text log
    OUTPUT/train_log.csv        step, lr, loss, eps_mse, rec_mse, rec_term, id_cos, id_term, images/s
    OUTPUT/checkpoints/checkpoint-00001000/   accelerate state + trainer_state.json (written last)
    OUTPUT/samples/step-00001000.png          sample grids (EMA weights, DDIM)
    OUTPUT/pipeline/            the ID3Pipeline (save_pretrained)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader

from facesynth.core.checkpoints import TRAINER_STATE, find_checkpoint, prune_checkpoints
from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError, FacesynthError, ShardError
from facesynth.generators.attributes import (
    attributes_to_array,
    normalize_attributes,
    require_attribute_coverage,
)
from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
from facesynth.generators.id3_loss import ID3LossConfig, id3_loss, require_differentiable
from facesynth.generators.id3_unet import build_id3_unet

logger = logging.getLogger("facesynth.id3_trainer")

EMA_FILE = "ema.safetensors"
LOG_FIELDS = (
    "step",
    "epoch",
    "lr",
    "loss",
    "eps_mse",
    "rec_mse",
    "rec_term",
    "id_cos",
    "id_term",
    "images_per_s",
)


class ID3TrainConfig(StageConfig):
    """Settings of ``facesynth train-generator``; defaults follow ID3 where known (marked ours otherwise)."""

    data: list[str] = Field(min_length=1, description="shard dataset folders with an embedding column")
    output_dir: str = Field(description="run folder")
    image_size: int = Field(
        default=112, ge=8, description="pixel size the model generates (faces are resized)"
    )
    unet_preset: Literal["tiny", "small", "base"] = "base"
    unet_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="UNet2DConditionModel config overrides, plus the condition-wiring options of "
        "facesynth.generators.id3_unet: cross_attention_levels ('preset' | 'all': cross-attention in every "
        "level) and condition_in_time_embedding (true: the condition is also added to the timestep embedding)",
    )
    vae: str | None = Field(
        default=None, description="AutoencoderKL folder for latent mode; None: pixel space"
    )
    hidden_dims: tuple[int, int] = (512, 256)
    cross_attention_dim: int = Field(default=768, ge=8)
    num_tokens: int = Field(
        default=1,
        ge=1,
        description="condition tokens for cross-attention (1: a spatially uniform bias; ours)",
    )
    activation: Literal["relu", "silu", "gelu"] = "relu"
    use_attributes: bool = Field(
        default=True,
        description="condition on pose/age; refused when most attribute values in the data are missing",
    )
    condition_dropout: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="classifier-free-guidance dropout; 0 (the paper has no CFG and this also drops the "
        "identity term of the dropped samples)",
    )
    identity_encoder: str | None = Field(
        default=None, description="load_encoder spec (torch:PATH) of the frozen encoder for the identity term"
    )
    loss: ID3LossConfig = Field(default_factory=ID3LossConfig)
    num_train_timesteps: int = Field(default=1000, ge=10)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    batch_size: int = Field(default=16, ge=1, description="per process")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    lr_warmup_steps: int = Field(default=500, ge=0)
    max_steps: int = Field(default=500_000, ge=1, description="optimizer steps")
    grad_clip: float = Field(default=1.0, ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    use_ema: bool = True
    ema_decay: float = Field(default=0.9999, gt=0, lt=1)
    checkpoint_every: int = Field(default=1000, ge=0, description="0 = only at the end")
    keep_checkpoints: int = Field(default=3, ge=1)
    resume: str | None = Field(default=None, description="'latest' or a checkpoint folder")
    sample_every: int = Field(default=1000, ge=0, description="0 = only at the end")
    sample_count: int = Field(default=16, ge=1)
    sample_steps: int = Field(default=25, ge=1)
    log_every: int = Field(default=50, ge=1)
    num_workers: int = Field(default=2, ge=0)
    buffer_size: int = Field(default=1000, ge=1)
    seed: int = 0
    progress: bool = True


@dataclass
class ID3TrainResult:
    """What a finished run reports."""

    run_dir: Path
    pipeline_dir: Path
    steps: int
    last_terms: dict[str, float] = field(default_factory=dict)
    images_per_second: float = 0.0
    filled_attributes: int = 0
    renormalised_embeddings: int = 0


# ------------------------------------------------------------------------------------------ data
def _collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    embeddings = []
    for row in rows:
        if row.get("embedding") is None:
            raise ShardError("train-generator: a row has a null embedding (every row needs its condition)")
        embeddings.append(row["embedding"])
    emb = torch.stack(embeddings).float()
    norms = emb.norm(dim=1, keepdim=True)
    physical, filled = attributes_to_array([row.get("attributes") for row in rows])
    return {
        "image": torch.stack([row["image"] for row in rows]),
        "embedding": emb / norms.clamp_min(1e-12),
        "renormalised": int(((norms.squeeze(1) - 1).abs() > 1e-2).sum()),
        "attributes": torch.from_numpy(physical),
        "filled": filled,
    }


def _exact_batches(loader: Any, batch_size: int) -> Iterator[dict[str, Any]]:
    """Re-cut per-worker batches into exactly ``batch_size`` rows (remainder dropped)."""
    pending: dict[str, Any] | None = None
    for batch in loader:
        pending = batch if pending is None else _merge(pending, batch)
        while pending["image"].shape[0] >= batch_size:
            yield {k: (v[:batch_size] if torch.is_tensor(v) else v) for k, v in pending.items()}
            pending = {k: (v[batch_size:] if torch.is_tensor(v) else 0) for k, v in pending.items()}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: (torch.cat([a[k], b[k]]) if torch.is_tensor(a[k]) else a[k] + b[k]) for k in a}


def check_training_data(sources: list[str]) -> int:
    """Embedding width of the training data, read from the shard schemas (no data is loaded)."""
    from facesynth.core.shard_format import embedding_dim_of, read_schema
    from facesynth.core.shard_reader import dataset_files

    widths: dict[int, str] = {}
    for source in sources:
        for file in dataset_files(source):
            width = embedding_dim_of(read_schema(file))
            if width is None:
                raise ShardError(
                    f"{file}: train-generator needs an 'embedding' column (ingest the data with an identity "
                    "encoder first)"
                )
            widths.setdefault(width, str(file))
    if len(widths) != 1:
        raise ShardError(f"training data mixes embedding widths: {widths}")
    return next(iter(widths))


def _fixed_conditions(sources: list[str], count: int) -> tuple[torch.Tensor, np.ndarray]:
    """The first ``count`` (embedding, attributes) rows: the fixed conditions of the sample grids."""
    import pyarrow.parquet as pq

    from facesynth.core.shard_reader import dataset_files

    embeddings: list[Any] = []
    attributes: list[Any] = []
    for file in dataset_files(sources[0]):
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["embedding", "attributes"])
            embeddings += table.column("embedding").to_pylist()
            attributes += table.column("attributes").to_pylist()
            if len(embeddings) >= count:
                break
        if len(embeddings) >= count:
            break
    emb = F.normalize(torch.tensor(embeddings[:count], dtype=torch.float32), dim=1)
    physical, _ = attributes_to_array(attributes[:count])
    return emb, physical


# ------------------------------------------------------------------------------------------ checkpoints
def save_grid(images: np.ndarray, path: Path, columns: int = 8) -> None:
    """(N, H, W, 3) floats in [0, 1] -> one PNG grid (written atomically)."""
    from PIL import Image

    from facesynth.core.atomic_io import commit_temp_file, temp_path_for

    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    grid = np.ones((rows * h, columns * w, 3), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(tmp, format="PNG")
    commit_temp_file(tmp, path)


# ------------------------------------------------------------------------------------------ training
def train_id3(config: ID3TrainConfig, identity_encoder: Any | None = None) -> ID3TrainResult:
    """Train ID3 as configured; ``identity_encoder`` overrides ``config.identity_encoder`` (library use)."""
    from accelerate.utils import ProjectConfiguration
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from facesynth.core.accelerator import make_accelerator
    from facesynth.core.shard_reader import ShardDataset
    from facesynth.generators.id3_pipeline import ID3Pipeline

    run_dir = Path(config.output_dir)
    accelerator = make_accelerator(
        config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(run_dir)),
    )
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        (run_dir / "train_config.json").write_text(json.dumps(config.to_json_dict(), indent=2))
    device = accelerator.device

    embedding_dim = check_training_data(config.data)
    if config.use_attributes:
        require_attribute_coverage(config.data)
    if config.loss.lambda_id != 0 and identity_encoder is None:
        if config.identity_encoder is None:
            raise ConfigError(
                "train-generator: loss.lambda_id != 0 needs identity_encoder (a torch:PATH spec), "
                "or set loss.lambda_id=0 for a model without the identity term"
            )
        from facesynth.recognizers.encoders import load_encoder

        identity_encoder = load_encoder(config.identity_encoder, device=device)
    if config.loss.lambda_id != 0:
        require_differentiable(identity_encoder, "the identity loss term")
        enc_dim = getattr(identity_encoder, "embedding_dim", embedding_dim)
        if enc_dim != embedding_dim:
            raise ConfigError(
                f"train-generator: identity encoder gives {enc_dim}-d embeddings but the data's embedding "
                f"column is {embedding_dim}-d; they must come from the same encoder"
            )
        model = getattr(identity_encoder, "model", identity_encoder)
        if isinstance(model, torch.nn.Module):
            model.requires_grad_(False).eval().to(device)

    vae = None
    if config.vae is not None:
        vae = AutoencoderKL.from_pretrained(config.vae).requires_grad_(False).eval().to(device)
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        if config.image_size % scale:
            raise ConfigError(
                f"train-generator: image_size {config.image_size} not divisible by VAE factor {scale}"
            )
        sample_size, channels = config.image_size // scale, int(vae.config.latent_channels)
    else:
        sample_size, channels = config.image_size, 3

    torch.manual_seed(config.seed)  # identical initial weights on every process
    unet = build_id3_unet(
        config.unet_preset, sample_size, channels, config.cross_attention_dim, **config.unet_kwargs
    )
    condition_encoder = ID3ConditionEncoder(
        embedding_dim=embedding_dim,
        num_attributes=4 if config.use_attributes else 0,
        hidden_dims=tuple(config.hidden_dims),
        cross_attention_dim=config.cross_attention_dim,
        num_tokens=config.num_tokens,
        activation=config.activation,
        condition_dropout=config.condition_dropout,
    )
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=vae is None,
    )
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    params = list(unet.parameters()) + list(condition_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_steps * accelerator.num_processes,
    )
    unet, condition_encoder, optimizer, lr_scheduler = accelerator.prepare(
        unet, condition_encoder, optimizer, lr_scheduler
    )
    ema = None
    if config.use_ema:
        ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
        ema.to(device)

    dataset = ShardDataset(
        config.data,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        shuffle=True,
        seed=config.seed,
        buffer_size=config.buffer_size,
        columns=["embedding", "attributes"],
    )
    batches_per_epoch = len(dataset) // config.batch_size
    if batches_per_epoch == 0:
        raise ShardError(
            f"{config.data}: {len(dataset)} rows per process is fewer than one batch of {config.batch_size}"
        )
    loader = DataLoader(
        dataset, batch_size=config.batch_size, num_workers=config.num_workers, collate_fn=_collate
    )

    global_step, micro_step = 0, 0
    if config.resume:
        checkpoint = find_checkpoint(run_dir, config.resume)
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            state = json.loads((checkpoint / TRAINER_STATE).read_text())
            global_step, micro_step = int(state["step"]), int(state["micro_step"])
            if ema is not None:
                _load_ema(ema, checkpoint, int(state.get("ema_step", 0)))
            if main:
                logger.info("resumed from %s at step %d", checkpoint, global_step)
        elif main:
            logger.info("resume=latest: no checkpoint in %s, starting from scratch", run_dir)

    def batches() -> Iterator[tuple[int, dict[str, Any]]]:
        epoch = micro_step // batches_per_epoch
        skip = micro_step % batches_per_epoch
        while True:
            dataset.set_epoch(epoch)
            for i, batch in enumerate(_exact_batches(loader, config.batch_size)):
                if i >= batches_per_epoch:
                    break
                if i < skip:
                    continue
                yield epoch, batch
            skip = 0
            epoch += 1

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents / vae.config.scaling_factor).sample

    fixed_y, fixed_s = _fixed_conditions(config.data, config.sample_count)

    def export(target: Path) -> ID3Pipeline:
        """Build the pipeline with EMA weights (restored afterwards unless exporting at the end)."""
        pipe = ID3Pipeline(
            unet=accelerator.unwrap_model(unet),
            scheduler=DDPMScheduler.from_config(noise_scheduler.config),
            condition_encoder=accelerator.unwrap_model(condition_encoder),
            vae=vae,
            identity_encoder_spec=config.identity_encoder,
        )
        pipe.save_pretrained(str(target))
        return pipe

    def sample_grid(step: int) -> None:
        pipe = ID3Pipeline(
            unet=accelerator.unwrap_model(unet),
            scheduler=DDIMScheduler.from_config(noise_scheduler.config),
            condition_encoder=accelerator.unwrap_model(condition_encoder),
            vae=vae,
        )
        pipe.set_progress_bar_config(disable=True)
        images = pipe(
            fixed_y.to(device),
            fixed_s,
            num_inference_steps=config.sample_steps,
            generator=torch.Generator().manual_seed(config.seed),
            output_type="np",
        ).images
        save_grid(images, run_dir / "samples" / f"step-{step:08d}.png")

    csv_path = run_dir / "train_log.csv"
    if main and not csv_path.is_file():
        with csv_path.open("w", newline="") as handle:
            csv.writer(handle).writerow(LOG_FIELDS)
    unet.train()
    condition_encoder.train()
    progress = tqdm(
        total=config.max_steps, initial=global_step, disable=not (main and config.progress), desc="train ID3"
    )
    totals = {"filled": 0, "renormalised": 0}
    window: dict[str, float] = {}
    window_count, images_seen, started = 0, 0, time.perf_counter()
    last_terms: dict[str, float] = {}
    rank = accelerator.process_index
    data = batches()
    while global_step < config.max_steps:
        epoch, batch = next(data)
        gen = torch.Generator().manual_seed((config.seed * 1_000_003 + micro_step) * 1009 + rank)
        micro_step += 1
        totals["filled"] += batch["filled"]
        totals["renormalised"] += batch["renormalised"]
        images = batch["image"].to(device)
        if images.shape[-1] != config.image_size:
            images = F.interpolate(
                images, size=(config.image_size, config.image_size), mode="bilinear", antialias=True
            )
        y = batch["embedding"].to(device)
        s = normalize_attributes(batch["attributes"], check=False).to(device)
        with accelerator.accumulate(unet, condition_encoder), accelerator.autocast():
            if vae is not None:
                with torch.no_grad():
                    posterior = vae.encode(images.to(vae.dtype)).latent_dist
                    eps_vae = torch.randn(posterior.mean.shape, generator=gen).to(
                        device, posterior.mean.dtype
                    )
                    clean = (posterior.mean + posterior.std * eps_vae) * vae.config.scaling_factor
            else:
                clean = images
            noise = torch.randn(clean.shape, generator=gen).to(device)
            timesteps = torch.randint(0, config.num_train_timesteps, (clean.shape[0],), generator=gen).to(
                device
            )
            drop = condition_encoder_module(condition_encoder).sample_drop_mask(clean.shape[0], gen)
            if drop is None:
                drop = torch.zeros(clean.shape[0], dtype=torch.bool)
            drop = drop.to(device)
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            tokens = condition_encoder(y, s if config.use_attributes else None, drop)
            noise_pred = unet(noisy, timesteps, encoder_hidden_states=tokens).sample
            terms = id3_loss(
                config.loss,
                noise_pred=noise_pred,
                noise=noise,
                noisy=noisy,
                clean=clean,
                timesteps=timesteps,
                alphas_cumprod=alphas_cumprod,
                identity_embeddings=y,
                identity_encoder=identity_encoder if config.loss.lambda_id != 0 else None,
                decode=decode if vae is not None else None,
                id_mask=~drop,
            )
            if not torch.isfinite(terms["loss"]):
                raise FacesynthError(f"train-generator: non-finite loss at step {global_step} ({terms})")
            accelerator.backward(terms["loss"])
            if accelerator.sync_gradients and config.grad_clip > 0:
                accelerator.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        for key, value in terms.items():
            window[key] = window.get(key, 0.0) + float(value.detach())
        window_count += 1
        images_seen += clean.shape[0]
        if not accelerator.sync_gradients:
            continue
        if ema is not None:
            ema.step(params)
        global_step += 1
        progress.update(1)
        if global_step % config.log_every == 0 or global_step == config.max_steps:
            last_terms = {k: v / window_count for k, v in window.items()}
            rate = images_seen * accelerator.num_processes / max(1e-9, time.perf_counter() - started)
            if main:
                row = {"step": global_step, "epoch": epoch, "lr": lr_scheduler.get_last_lr()[0], **last_terms}
                row["images_per_s"] = rate
                with csv_path.open("a", newline="") as handle:
                    csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore").writerow(row)
                progress.set_postfix(loss=f"{last_terms['loss']:.4f}", id_cos=f"{last_terms['id_cos']:.3f}")
                logger.info(
                    "step %d loss %.5f eps %.5f rec %.5f id_cos %.4f",
                    global_step,
                    last_terms["loss"],
                    last_terms["eps_mse"],
                    last_terms["rec_mse"],
                    last_terms["id_cos"],
                )
            window, window_count = {}, 0
        if config.checkpoint_every and global_step % config.checkpoint_every == 0:
            _save_checkpoint(accelerator, run_dir, global_step, micro_step, config.keep_checkpoints, ema)
        if main and config.sample_every and global_step % config.sample_every == 0:
            with _ema_weights(ema, params):
                sample_grid(global_step)
    progress.close()
    rate = images_seen * accelerator.num_processes / max(1e-9, time.perf_counter() - started)
    accelerator.wait_for_everyone()
    pipeline_dir = run_dir / "pipeline"
    if main:
        if config.checkpoint_every == 0 or global_step % config.checkpoint_every:
            _save_checkpoint(accelerator, run_dir, global_step, micro_step, config.keep_checkpoints, ema)
        with _ema_weights(ema, params):
            if not config.sample_every or global_step % config.sample_every:
                sample_grid(global_step)
            export(pipeline_dir)
        if totals["filled"]:
            logger.info(
                "attributes: %d values were missing in the shards and set to neutral values", totals["filled"]
            )
        if totals["renormalised"]:
            logger.info(
                "embeddings: %d rows were not unit-norm and were L2-normalised", totals["renormalised"]
            )
        logger.info("wrote %s after %d steps", pipeline_dir, global_step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return ID3TrainResult(
        run_dir=run_dir,
        pipeline_dir=pipeline_dir,
        steps=global_step,
        last_terms=last_terms,
        images_per_second=rate,
        filled_attributes=totals["filled"],
        renormalised_embeddings=totals["renormalised"],
    )


def condition_encoder_module(module: Any) -> ID3ConditionEncoder:
    """The condition encoder inside a DDP/compile wrapper."""
    return getattr(module, "module", module)


class _ema_weights:  # noqa: N801 - used as a context manager
    """Temporarily swap the EMA weights into the live parameters."""

    def __init__(self, ema: Any | None, params: list[torch.nn.Parameter]):
        self.ema, self.params = ema, params

    def __enter__(self) -> None:
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)

    def __exit__(self, *exc: Any) -> None:
        if self.ema is not None:
            self.ema.restore(self.params)


def _save_checkpoint(
    accelerator: Any, run_dir: Path, step: int, micro_step: int, keep: int, ema: Any | None
) -> None:
    """accelerate state (+ EMA weights as safetensors) into checkpoint-STEP; trainer_state.json last."""
    from safetensors.torch import save_file

    path = run_dir / "checkpoints" / f"checkpoint-{step:08d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        state = {"step": step, "micro_step": micro_step}
        if ema is not None:
            tensors = {f"shadow.{i}": p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}
            save_file(tensors, str(path / EMA_FILE))
            state["ema_step"] = int(ema.optimization_step)
        tmp = path / (TRAINER_STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path / TRAINER_STATE)
        prune_checkpoints(run_dir / "checkpoints", keep)
    accelerator.wait_for_everyone()


def _load_ema(ema: Any, checkpoint: Path, ema_step: int) -> None:
    """Restore EMA shadow weights saved by :func:`_save_checkpoint` (safetensors, no pickle)."""
    from safetensors.torch import load_file

    file = checkpoint / EMA_FILE
    if not file.is_file():
        raise FacesynthError(f"{checkpoint}: {EMA_FILE} is missing (checkpoint written without EMA?)")
    tensors = load_file(str(file))
    if len(tensors) != len(ema.shadow_params):
        raise FacesynthError(f"{file}: {len(tensors)} EMA tensors for a model with {len(ema.shadow_params)}")
    for i, param in enumerate(ema.shadow_params):
        param.data.copy_(tensors[f"shadow.{i}"].to(param.device))
    ema.optimization_step = ema_step
