"""Tiny real components shared by the ID3 tests: a torch identity encoder and a small shard dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.recognizers.encoders import TorchEncoder
from facesynth.tests.shard_fixtures import add_manifest

EMBEDDING_DIM = 16


class TinyFaceNet(nn.Module):
    """Two strided convolutions and a linear layer: a differentiable stand-in for an IResNet."""

    def __init__(self, dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(x.flatten(1))


def tiny_encoder(seed: int = 0, size: int = 32) -> TorchEncoder:
    torch.manual_seed(seed)
    return TorchEncoder(TinyFaceNet().requires_grad_(False), input_size=(size, size), description="tiny")


def face_image(label: int, index: int) -> np.ndarray:
    """A 112x112 uint8 'face': an identity-coloured ellipse whose position varies with the index."""
    rng = np.random.default_rng(label)
    colour = rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:112, 0:112]
    cx = 56 + (index % 3 - 1) * 6
    mask = ((xx - cx) / 30.0) ** 2 + ((yy - 56) / 40.0) ** 2 < 1
    image = np.full((112, 112, 3), 30.0)
    image[mask] = colour
    return image.astype(np.uint8)


def write_tiny_dataset(
    root: Path, encoder: TorchEncoder, identities: int = 4, per_identity: int = 4, attributes: bool = True
) -> Path:
    """A one-shard dataset whose embedding column is the encoder's embedding of each image."""
    images = [face_image(label, i) for label in range(identities) for i in range(per_identity)]
    embeddings = _embed(encoder, images)
    rows = []
    for n, image in enumerate(images):
        label, index = divmod(n, per_identity)
        attrs = (
            {"yaw": float(10 * index), "pitch": 0.0, "roll": 0.0, "age": 30.0 + label} if attributes else None
        )
        rows.append(
            ShardRow(
                image=image,
                label=label,
                identity=f"id{label}",
                index=index,
                embedding=embeddings[n],
                attributes=attrs,
            )
        )
    write_shard(root / shard_name(0, 1), rows_to_table(rows, EMBEDDING_DIM))
    add_manifest(root, embedding_dim=EMBEDDING_DIM)
    return root


def _embed(encoder: TorchEncoder, images: list[np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    batch = nn.functional.interpolate(batch, size=encoder.input_size, mode="bilinear", antialias=True)
    with torch.no_grad():
        return encoder.embed(batch).numpy()


def tiny_pipeline(
    sample_size: int = 8, dim: int = EMBEDDING_DIM, seed: int = 0, condition_dropout: float = 0.1
):
    """A randomly initialised ID3Pipeline small enough for CPU tests (2-level UNet, 8x8 pixels)."""
    from diffusers import DDPMScheduler

    from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
    from facesynth.generators.id3_pipeline import ID3Pipeline
    from facesynth.generators.id3_unet import build_id3_unet

    torch.manual_seed(seed)
    unet = build_id3_unet("tiny", sample_size, cross_attention_dim=32)
    encoder = ID3ConditionEncoder(
        embedding_dim=dim, hidden_dims=(32, 32), cross_attention_dim=32, condition_dropout=condition_dropout
    )
    pipe = ID3Pipeline(
        unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000), condition_encoder=encoder
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unit_embeddings(batch: int, dim: int = EMBEDDING_DIM, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(batch, dim, generator=generator), dim=1)


def one_thread():
    """Context for tests: one intra-op thread (the CI box is small and shared; more threads thrash)."""
    import contextlib

    @contextlib.contextmanager
    def _ctx():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return _ctx()


def tiny_train_config(data, out, **kwargs):
    """ID3TrainConfig for a few-step run of the tiny UNet on ``data`` (overrides in ``kwargs``)."""
    from facesynth.generators.id3_trainer import ID3TrainConfig

    settings = dict(
        data=[str(data)],
        output_dir=str(out),
        image_size=8,
        unet_preset="tiny",
        hidden_dims=(32, 32),
        cross_attention_dim=32,
        batch_size=4,
        max_steps=4,
        lr=1e-3,
        lr_warmup_steps=0,
        checkpoint_every=2,
        sample_every=2,
        sample_count=4,
        sample_steps=2,
        log_every=1,
        num_workers=0,
        progress=False,
    )
    settings.update(kwargs)
    return ID3TrainConfig.from_mapping(settings)
