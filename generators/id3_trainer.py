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

Run folder (:class:`~facesynth.core.training_run.TrainingRun`)::

    OUTPUT/train.log            text log
    OUTPUT/train_log.csv        step, epoch, lr, every loss term (loss, eps_mse, rec_mse, ...), images/s
    OUTPUT/checkpoints/checkpoint-1000/   accelerate state (optimizer, scheduler, RNG); unet/ and
                                condition_encoder/ (save_pretrained), unet_ema/ and condition_encoder_ema/
                                (EMAModel.save_pretrained); trainer_state.json (written last)
    OUTPUT/samples/step-00001000.png          sample grids (EMA weights, DDIM)
    OUTPUT/pipeline/            the ID3Pipeline (save_pretrained)
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import DataLoader

from facesynth.core.checkpoints import TRAINER_STATE
from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError, FacesynthError, ShardError
from facesynth.core.training_run import Throughput, TrainingRun, exact_batches
from facesynth.generators.attributes import (
    attributes_to_array,
    normalize_attributes,
    require_attribute_coverage,
)
from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
from facesynth.generators.id3_loss import ID3LossConfig, id3_loss, require_differentiable
from facesynth.generators.id3_unet import build_id3_unet
from facesynth.recognizers.encoders import resize_faces

logger = logging.getLogger("facesynth.id3_trainer")

LEGACY_EMA_FILE = "ema.safetensors"  # EMA weights of checkpoints written before save_pretrained


class ID3TrainConfig(StageConfig):
    """Settings of ``facesynth train-generator``; defaults follow ID3 where known (marked ours otherwise)."""

    data: list[str] = Field(min_length=1, description="shard dataset folders with an embedding column")
    output_dir: str = Field(description="run folder")
    image_size: int = Field(
        default=112, ge=8, description="pixel size the model generates (faces are resized)"
    )
    unet_preset: Literal["tiny", "small", "base"] = Field(default="base", description="UNet size preset")
    unet_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="UNet2DConditionModel config overrides, plus the condition-wiring options of "
        "facesynth.generators.id3_unet: cross_attention_levels ('preset' | 'all': cross-attention in every "
        "level) and condition_in_time_embedding (true: the condition is also added to the timestep embedding)",
    )
    vae: str | None = Field(
        default=None, description="AutoencoderKL folder for latent mode; None: pixel space"
    )
    hidden_dims: tuple[int, int] = Field(default=(512, 256), description="condition encoder MLP widths")
    cross_attention_dim: int = Field(default=768, ge=8, description="width of the condition tokens")
    num_tokens: int = Field(
        default=1,
        ge=1,
        description="condition tokens for cross-attention (1: a spatially uniform bias; ours)",
    )
    activation: Literal["relu", "silu", "gelu"] = Field(
        default="relu", description="condition MLP activation"
    )
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
    loss: ID3LossConfig = Field(default_factory=ID3LossConfig, description="ID3 loss weights and schedule")
    num_train_timesteps: int = Field(default=1000, ge=10, description="diffusion timesteps T")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field(
        default="linear",
        description="DDPM noise schedule (ID3's is unverified); at 16-32 px squaredcos_cap_v2 draws faces in "
        "far fewer steps (README, ID3 example)",
    )
    batch_size: int = Field(default=16, ge=1, description="per process")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="batches per optimizer step")
    lr: float = Field(default=1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        default="constant_with_warmup", description="diffusers LR schedule"
    )
    lr_warmup_steps: int | None = Field(
        default=None,
        ge=0,
        description="LR warm-up steps; None: min(500, max_steps // 10), so short runs leave warm-up",
    )
    max_steps: int = Field(default=500_000, ge=1, description="optimizer steps")
    grad_clip: float = Field(default=1.0, ge=0, description="max grad norm; 0 = off")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(default="no", description="autocast precision")
    use_ema: bool = Field(default=True, description="keep an EMA of the weights (exported and sampled)")
    ema_decay: float = Field(default=0.9999, gt=0, lt=1, description="EMA decay (with warm-up)")
    checkpoint_every: int = Field(default=1000, ge=0, description="0 = only at the end")
    keep_checkpoints: int = Field(default=3, ge=1, description="newest checkpoints kept")
    resume: str | None = Field(default=None, description="'latest' or a checkpoint folder")
    sample_every: int = Field(default=1000, ge=0, description="0 = only at the end")
    sample_count: int = Field(default=16, ge=1, description="images in each sample grid")
    sample_steps: int = Field(default=25, ge=1, description="DDIM steps of the sample grids")
    log_every: int = Field(default=50, ge=1, description="steps between rows of train_log.csv")
    num_workers: int = Field(default=2, ge=0, description="DataLoader worker processes per training process")
    buffer_size: int = Field(default=1000, ge=1, description="rows in the streaming shuffle buffer")
    seed: int = Field(default=0, description="seed of weights, data order and noise")
    progress: bool = Field(default=True, description="show a progress bar")

    def effective_warmup_steps(self) -> int:
        """Warm-up steps: the field, or min(500, max_steps // 10); warns when warm-up outlasts the run."""
        if self.lr_warmup_steps is None:
            return min(500, self.max_steps // 10)
        if self.lr_warmup_steps >= self.max_steps and self.lr_scheduler != "constant":
            logger.warning(
                "lr_warmup_steps %d >= max_steps %d: the run never leaves warm-up (the learning rate stays "
                "below lr); lower lr_warmup_steps or leave it unset",
                self.lr_warmup_steps,
                self.max_steps,
            )
        return self.lr_warmup_steps


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
    physical, _ = attributes_to_array([row.get("attributes") for row in rows])
    # per-row counts, so exact_batches' re-cut batches carry their own rows' counts
    filled = [attributes_to_array([row.get("attributes")])[1] for row in rows]
    return {
        "image": torch.stack([row["image"] for row in rows]),
        "embedding": emb / norms.clamp_min(1e-12),
        "renormalised": ((norms.squeeze(1) - 1).abs() > 1e-2).long(),
        "attributes": torch.from_numpy(physical),
        "filled": torch.tensor(filled, dtype=torch.long),
    }


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
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from facesynth.core.shard_reader import ShardDataset
    from facesynth.generators.id3_pipeline import ID3Pipeline

    with TrainingRun(
        config.output_dir,
        config=config,
        mixed_precision=config.mixed_precision,
        keep_checkpoints=config.keep_checkpoints,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    ) as run:
        accelerator, device, rank = run.accelerator, run.accelerator.device, run.rank
        embedding_dim = check_training_data(config.data)
        if config.use_attributes:
            require_attribute_coverage(config.data)
        identity_encoder = _identity_encoder(config, identity_encoder, embedding_dim, device)
        vae, sample_size, channels = _load_vae(config, device)

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
        lr_scheduler = get_scheduler(  # accelerate steps a prepared scheduler once per process
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.effective_warmup_steps() * run.world,
            num_training_steps=config.max_steps * run.world,
        )
        unet, condition_encoder, optimizer, lr_scheduler = accelerator.prepare(
            unet, condition_encoder, optimizer, lr_scheduler
        )
        emas = _make_emas(config, accelerator, unet, condition_encoder)
        run.register_hooks(
            save=functools.partial(_save_models, accelerator, emas),
            load=functools.partial(_load_models, accelerator, emas),
        )

        dataset = ShardDataset(
            config.data,
            rank=rank,
            world_size=run.world,
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
        resumed = run.resume(config.resume)
        if resumed is not None:
            global_step, micro_step = int(resumed["step"]), int(resumed["micro_step"])
        start_step = global_step

        def batches() -> Iterator[tuple[int, dict[str, Any]]]:
            epoch, skip = divmod(micro_step, batches_per_epoch)
            while True:
                dataset.set_epoch(epoch)
                for i, batch in enumerate(exact_batches(loader, config.batch_size)):
                    if i >= batches_per_epoch:
                        break
                    if i >= skip:
                        yield epoch, batch
                skip, epoch = 0, epoch + 1

        def decode(latents: torch.Tensor) -> torch.Tensor:
            return vae.decode(latents / vae.config.scaling_factor).sample

        fixed_y, fixed_s = _fixed_conditions(config.data, config.sample_count)

        def pipeline(scheduler: Any) -> ID3Pipeline:
            return ID3Pipeline(
                unet=accelerator.unwrap_model(unet),
                scheduler=scheduler.from_config(noise_scheduler.config),
                condition_encoder=accelerator.unwrap_model(condition_encoder),
                vae=vae,
                identity_encoder_spec=config.identity_encoder,
            )

        def sample_grid(step: int) -> None:  # main process only, EMA weights swapped in
            pipe = pipeline(DDIMScheduler)
            pipe.set_progress_bar_config(disable=True)
            images = pipe(
                fixed_y.to(device),
                fixed_s,
                num_inference_steps=config.sample_steps,
                generator=torch.Generator().manual_seed(config.seed),
                output_type="np",
            ).images
            save_grid(images, run.run_dir / "samples" / f"step-{step:08d}.png")

        unet.train()
        condition_encoder.train()
        progress = tqdm(
            total=config.max_steps,
            initial=global_step,
            disable=not (run.is_main and config.progress),
            desc="train ID3",
        )
        totals = {"filled": 0, "renormalised": 0}
        window: dict[str, float] = {}
        window_count, meter, last_terms = 0, Throughput(), dict(resumed.get("terms", {}) if resumed else {})
        data = batches()
        while global_step < config.max_steps:
            epoch, batch = next(data)
            gen = torch.Generator().manual_seed((config.seed * 1_000_003 + micro_step) * 1009 + rank)
            micro_step += 1
            totals["filled"] += int(batch["filled"].sum())
            totals["renormalised"] += int(batch["renormalised"].sum())
            images = batch["image"].to(device)
            images = resize_faces(images, (config.image_size, config.image_size))
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
                timesteps = torch.randint(0, config.num_train_timesteps, (clean.shape[0],), generator=gen)
                timesteps = timesteps.to(device)
                drop = condition_encoder_module(condition_encoder).sample_drop_mask(clean.shape[0], gen)
                drop = (torch.zeros(clean.shape[0], dtype=torch.bool) if drop is None else drop).to(device)
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
            for key, value in terms.items():  # averaged over every micro-batch of the log window
                window[key] = window.get(key, 0.0) + float(value.detach())
            window_count += 1
            meter.add(clean.shape[0] * run.world)
            if not accelerator.sync_gradients:
                continue
            for name, ema in emas.items():
                ema.step(_module(accelerator, unet, condition_encoder, name).parameters())
            global_step += 1
            progress.update(1)
            if global_step % config.log_every == 0 or global_step == config.max_steps:
                last_terms = {k: v / window_count for k, v in window.items()}
                row = {"epoch": epoch, "lr": lr_scheduler.get_last_lr()[0], **last_terms}
                run.log({**row, "images_per_s": meter.window_rate()}, global_step)
                progress.set_postfix(loss=f"{last_terms['loss']:.4f}", id_cos=f"{last_terms['id_cos']:.3f}")
                logger.info(
                    "step %d loss %.5f eps %.5f rec %.5f id_cos %.4f",
                    *(global_step, last_terms["loss"], last_terms["eps_mse"], last_terms["rec_mse"]),
                    last_terms["id_cos"],
                )
                window, window_count = {}, 0
            with meter.paused():
                if config.checkpoint_every and global_step % config.checkpoint_every == 0:
                    run.save_checkpoint(global_step, {"micro_step": micro_step, "terms": last_terms})
                if run.is_main and config.sample_every and global_step % config.sample_every == 0:
                    with _ema_weights(accelerator, emas, unet, condition_encoder):
                        sample_grid(global_step)
        progress.close()

        # the end: every process saves the last checkpoint (a collective); the main one exports
        trained = global_step > start_step
        rate = meter.total_rate()
        if trained and (config.checkpoint_every == 0 or global_step % config.checkpoint_every):
            run.save_checkpoint(global_step, {"micro_step": micro_step, "terms": last_terms})
        pipeline_dir = run.run_dir / "pipeline"
        if run.is_main:
            with _ema_weights(accelerator, emas, unet, condition_encoder):
                if trained and (not config.sample_every or global_step % config.sample_every):
                    sample_grid(global_step)
                pipeline(DDPMScheduler).save_pretrained(str(pipeline_dir))
        run.barrier()
        if totals["filled"]:
            logger.info(
                "attributes: %d values were missing in the shards and set to neutral values", totals["filled"]
            )
        if totals["renormalised"]:
            logger.info(
                "embeddings: %d rows were not unit-norm and were L2-normalised", totals["renormalised"]
            )
        if trained:
            logger.info("wrote %s after %d steps (%.1f images/s)", pipeline_dir, global_step, rate)
        else:
            logger.info(
                "already finished at step %d (max_steps %d); wrote %s again",
                global_step,
                config.max_steps,
                pipeline_dir,
            )
        return ID3TrainResult(
            run_dir=run.run_dir,
            pipeline_dir=pipeline_dir,
            steps=global_step,
            last_terms=last_terms,
            images_per_second=rate,
            filled_attributes=totals["filled"],
            renormalised_embeddings=totals["renormalised"],
        )


def _identity_encoder(config: ID3TrainConfig, encoder: Any | None, embedding_dim: int, device: Any) -> Any:
    """The frozen encoder of the identity term (None when the term is off), checked against the data."""
    if config.loss.lambda_id == 0:
        return encoder
    if encoder is None:
        if config.identity_encoder is None:
            raise ConfigError(
                "train-generator: loss.lambda_id != 0 needs identity_encoder (a torch:PATH spec), "
                "or set loss.lambda_id=0 for a model without the identity term"
            )
        from facesynth.recognizers.encoders import load_encoder

        encoder = load_encoder(config.identity_encoder, device=device)
    require_differentiable(encoder, "the identity loss term")
    enc_dim = getattr(encoder, "embedding_dim", embedding_dim)
    if enc_dim != embedding_dim:
        raise ConfigError(
            f"train-generator: identity encoder gives {enc_dim}-d embeddings but the data's embedding "
            f"column is {embedding_dim}-d; they must come from the same encoder"
        )
    model = getattr(encoder, "model", encoder)
    if isinstance(model, torch.nn.Module):
        model.requires_grad_(False).eval().to(device)
    return encoder


def _load_vae(config: ID3TrainConfig, device: Any) -> tuple[Any | None, int, int]:
    """(vae or None, sample size, channels): latent mode when ``config.vae`` is set, else pixels."""
    if config.vae is None:
        return None, config.image_size, 3
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(config.vae).requires_grad_(False).eval().to(device)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if config.image_size % scale:
        raise ConfigError(
            f"train-generator: image_size {config.image_size} not divisible by VAE factor {scale}"
        )
    return vae, config.image_size // scale, int(vae.config.latent_channels)


def condition_encoder_module(module: Any) -> ID3ConditionEncoder:
    """The condition encoder inside a DDP/compile wrapper."""
    return getattr(module, "module", module)


# ------------------------------------------------------------------------------------------ EMA + checkpoints
def _module(accelerator: Any, unet: Any, condition_encoder: Any, name: str) -> torch.nn.Module:
    return accelerator.unwrap_model(unet if name == "unet" else condition_encoder)


def _make_emas(config: ID3TrainConfig, accelerator: Any, unet: Any, condition_encoder: Any) -> dict[str, Any]:
    """One ``EMAModel`` per trained model (so each saves with ``save_pretrained``), or none."""
    if not config.use_ema:
        return {}
    from diffusers.training_utils import EMAModel

    emas = {}
    for name in ("unet", "condition_encoder"):
        model = _module(accelerator, unet, condition_encoder, name)
        ema = EMAModel(
            model.parameters(),
            decay=config.ema_decay,
            use_ema_warmup=True,
            inv_gamma=1.0,
            power=3 / 4,
            model_cls=type(model),
            model_config=model.config,
        )
        ema.to(accelerator.device)
        emas[name] = ema
    return emas


def _save_models(accelerator: Any, emas: dict[str, Any], models: list, weights: list, folder: str) -> None:
    """accelerate save pre-hook: models and EMA weights with ``save_pretrained`` (diffusers' examples)."""
    if not accelerator.is_main_process:
        return
    for name, ema in emas.items():
        ema.save_pretrained(str(Path(folder) / f"{name}_ema"))
    for model in models:
        model = accelerator.unwrap_model(model)
        model.save_pretrained(str(Path(folder) / _subfolder(model)))
        weights.pop()


def _load_models(accelerator: Any, emas: dict[str, Any], models: list, folder: str) -> None:
    """accelerate load pre-hook (every process); checkpoints written before this layout still load."""
    from diffusers.training_utils import EMAModel

    folder = Path(folder)
    for name, ema in emas.items():
        path = folder / f"{name}_ema"
        if path.is_dir():
            loaded = EMAModel.from_pretrained(str(path), model_cls=ema.model_cls)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
    if emas and not (folder / "unet_ema").is_dir():
        _load_legacy_ema(emas, folder)
    if not (folder / "unet").is_dir():
        return  # older checkpoint: accelerate loads model.safetensors / model_1.safetensors
    while models:
        model = accelerator.unwrap_model(models.pop())
        loaded = type(model).from_pretrained(str(folder), subfolder=_subfolder(model))
        model.load_state_dict(loaded.state_dict())


def _subfolder(model: Any) -> str:
    return "condition_encoder" if isinstance(model, ID3ConditionEncoder) else "unet"


def _load_legacy_ema(emas: dict[str, Any], folder: Path) -> None:
    """EMA weights of checkpoints written before ``save_pretrained`` (``ema.safetensors``, one list)."""
    from safetensors.torch import load_file

    file = folder / LEGACY_EMA_FILE
    if not file.is_file():
        raise FacesynthError(f"{folder}: no EMA weights (checkpoint written without EMA? set use_ema=false)")
    tensors = load_file(str(file))
    shadows = [p for ema in emas.values() for p in ema.shadow_params]
    if len(tensors) != len(shadows):
        raise FacesynthError(f"{file}: {len(tensors)} EMA tensors for a model with {len(shadows)}")
    for i, param in enumerate(shadows):
        param.data.copy_(tensors[f"shadow.{i}"].to(param.device))
    step = json.loads((folder / TRAINER_STATE).read_text()).get("ema_step", 0)
    for ema in emas.values():
        ema.optimization_step = int(step)


class _ema_weights:  # noqa: N801 - used as a context manager
    """Temporarily swap the EMA weights into the live models (samples and the exported pipeline)."""

    def __init__(self, accelerator: Any, emas: dict[str, Any], unet: Any, condition_encoder: Any):
        self.pairs = [(ema, _module(accelerator, unet, condition_encoder, n)) for n, ema in emas.items()]

    def __enter__(self) -> None:
        for ema, model in self.pairs:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())

    def __exit__(self, *exc: Any) -> None:
        for ema, model in self.pairs:
            ema.restore(model.parameters())
