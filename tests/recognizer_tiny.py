"""Tiny real data and settings shared by the recognizer-trainer tests (CPU and GPU)."""

from __future__ import annotations

from pathlib import Path

from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.recognizers.trainer import RecognizerTrainConfig
from facesynth.tests.shard_fixtures import add_manifest


def make_shards(folder: Path, num_ids: int, per_id: int, seed: int = 0) -> Path:
    """A small shard dataset of procedural faces, two shards."""
    from facesynth.generators.registry import SampleRequest, build_generator

    generator = build_generator("parametric", num_identities=num_ids, seed=seed)
    rows = []
    for label in range(num_ids):
        faces = generator.generate(
            [SampleRequest(label, i, seed * 10_000 + label * 100 + i) for i in range(per_id)]
        )
        rows += [
            ShardRow(image=f.image, label=label, identity=f"p{label}", index=i) for i, f in enumerate(faces)
        ]
    half = len(rows) // 2
    write_shard(folder / shard_name(0, 2), rows_to_table(rows[:half], None), row_group_size=16)
    write_shard(folder / shard_name(1, 2), rows_to_table(rows[half:], None), row_group_size=16)
    add_manifest(folder)
    return folder


def small_config(data, out, **overrides) -> RecognizerTrainConfig:
    settings = dict(
        data=[str(d) for d in data],
        output_dir=str(out),
        backbone="tiny",
        input_size=32,
        batch_size=8,
        epochs=1,
        num_workers=0,
        log_every=1,
        progress=False,
        tensorboard=False,
    )
    settings.update(overrides)
    return RecognizerTrainConfig(**settings)
