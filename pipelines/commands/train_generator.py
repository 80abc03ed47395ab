"""``facesynth train-generator``: train ID3 on shards and write an ID3Pipeline folder."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "train the ID3 identity-conditioned diffusion model on shards; writes an ID3Pipeline folder"
DESCRIPTION = """\
Trains ID3 (condition encoder + UNet2DConditionModel, ID-preserving loss) on shard datasets with an
`embedding` column (and `attributes`; missing attributes get neutral values and the log says so).
Runs under `accelerate launch` unchanged (multi-GPU / multi-node, --mixed-precision bf16), keeps an
EMA, checkpoints every --checkpoint-every steps (rerun with --resume latest to continue exactly), writes
sample grids to OUT/samples/ and the final pipeline (EMA weights) to OUT/pipeline.

examples:
  facesynth train-generator --data runs/ffhq-ingested --out runs/id3 \\
      --identity-encoder torch:models/r50 --max-steps 500000 --mixed-precision bf16
  accelerate launch --num_processes 8 -m facesynth.pipelines.cli train-generator \\
      --data runs/ffhq-ingested --out runs/id3 --identity-encoder torch:models/r50 --resume latest
  facesynth train-generator --data runs/param --out runs/id3-cpu --unet-preset small \\
      --image-size 32 --cross-attention-dim 128 --hidden-dims 128 128 --max-steps 2000
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.generators.id3_trainer import ID3TrainConfig

    return CliSpec(
        ID3TrainConfig,
        flags={"output_dir": ["--out"]},
        deprecated={"output_dir": ["--output", "--output-dir"]},
        help={
            "unet_preset": "UNet size preset",
            "hidden_dims": "hidden widths of the condition encoder's MLP",
            "cross_attention_dim": "width of the condition tokens (the UNet's cross-attention)",
            "num_tokens": "condition tokens per image",
            "activation": "activation of the condition encoder",
            "use_attributes": "condition on the attributes column (yaw, pitch, roll, age)",
            "loss.lambda_eps": "weight of the noise-prediction term",
            "loss.lambda_rec": "weight of the reconstruction term",
            "loss.rec_schedule": "timestep schedule of the reconstruction weight",
            "loss.lambda_id": "weight of the identity term (0: no identity term, no encoder needed)",
            "loss.id_schedule": "timestep schedule of the identity weight",
            "num_train_timesteps": "diffusion timesteps",
            "beta_schedule": "noise schedule",
            "lr": "learning rate (AdamW)",
            "weight_decay": "AdamW weight decay",
            "lr_scheduler": "learning-rate schedule",
            "lr_warmup_steps": "warm-up steps of the schedule",
            "grad_clip": "max grad norm; 0 = off",
            "mixed_precision": "no, fp16 or bf16",
            "use_ema": "keep an EMA of the weights (the saved pipeline uses it)",
            "ema_decay": "EMA decay",
            "keep_checkpoints": "checkpoints kept (older ones are deleted)",
            "sample_every": "steps between sample grids",
            "sample_count": "images in a sample grid",
            "sample_steps": "sampler steps for the sample grids",
            "log_every": "steps between log lines",
            "num_workers": "DataLoader workers per process",
            "buffer_size": "shuffle buffer of the streaming reader (rows)",
            "seed": "seed of initialisation, shuffling and noise",
            "progress": "show a progress bar",
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())
    # the old spelling of any field, kept working: --set KEY=VALUE
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from facesynth.core.cli_args import normalise_file_settings
    from facesynth.core.config import parse_overrides
    from facesynth.generators.id3_trainer import train_id3

    spec = cli_spec()
    fixed = normalise_file_settings(spec, parse_overrides(args.set), "--set") if args.set else None
    config = config_from_args(spec, args, fixed=fixed)
    result = train_id3(config)
    terms = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.last_terms.items()))
    print(f"{result.pipeline_dir}: ID3Pipeline after {result.steps} steps ({terms})")
    return 0
