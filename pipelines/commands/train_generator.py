"""``facesynth train-generator``: train ID3 on shards and write an ID3Pipeline folder."""

from __future__ import annotations

import argparse

HELP = "train the ID3 identity-conditioned diffusion model on shards; writes an ID3Pipeline folder"
DESCRIPTION = """\
Trains ID3 (condition encoder + UNet2DConditionModel, ID-preserving loss) on shard datasets with an
`embedding` column (and `attributes`; missing attributes get neutral values and the log says so).
Runs under `accelerate launch` unchanged (multi-GPU / multi-node, --mixed-precision bf16), keeps an
EMA, checkpoints every --checkpoint-every steps (rerun with --resume latest to continue exactly), writes
sample grids to OUT/samples/ and the final pipeline (EMA weights) to OUT/pipeline.

examples:
  facesynth train-generator --data runs/ffhq-ingested --output runs/id3 \\
      --identity-encoder torch:models/r50 --max-steps 500000 --mixed-precision bf16
  accelerate launch --num_processes 8 -m facesynth.pipelines.cli train-generator \\
      --data runs/ffhq-ingested --output runs/id3 --identity-encoder torch:models/r50 --resume latest
  facesynth train-generator --data runs/param --output runs/id3-cpu --unet-preset small \\
      --image-size 32 --set cross_attention_dim=128 --set hidden_dims=[128,128] --max-steps 2000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="shard dataset folder(s) with embeddings")
    parser.add_argument("--output", required=True, help="run folder")
    parser.add_argument(
        "--identity-encoder",
        help="frozen encoder for the identity term (torch:PATH); needed unless --lambda-id 0",
    )
    parser.add_argument("--image-size", type=int, default=112, help="generated image size (default 112)")
    parser.add_argument("--unet-preset", choices=["tiny", "small", "base"], default="base")
    parser.add_argument("--vae", help="AutoencoderKL folder: train in its latent space")
    parser.add_argument("--batch-size", type=int, default=16, help="per process (default 16)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-steps", type=int, default=500_000, help="optimizer steps (default 500000)")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument(
        "--lambda-id", type=float, default=1.0, help="identity-term weight (0: no identity term)"
    )
    parser.add_argument("--lambda-rec", type=float, default=1.0, help="reconstruction-term weight")
    parser.add_argument(
        "--id-schedule", default="id3_sigmoid", help="identity weight schedule (id3_sigmoid, constant, ...)"
    )
    parser.add_argument("--condition-dropout", type=float, default=0.0, help="CFG condition dropout (0: off)")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--resume", help="'latest' or a checkpoint folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other ID3TrainConfig field, repeatable (e.g. --set ema_decay=0.999)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from facesynth.core.config import parse_overrides
    from facesynth.generators.id3_trainer import ID3TrainConfig, train_id3

    settings = {
        "data": [str(d) for d in args.data],
        "output_dir": str(args.output),
        "identity_encoder": args.identity_encoder,
        "image_size": args.image_size,
        "unet_preset": args.unet_preset,
        "vae": args.vae,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "lr": args.lr,
        "max_steps": args.max_steps,
        "mixed_precision": args.mixed_precision,
        "loss": {"lambda_id": args.lambda_id, "lambda_rec": args.lambda_rec, "id_schedule": args.id_schedule},
        "condition_dropout": args.condition_dropout,
        "checkpoint_every": args.checkpoint_every,
        "sample_every": args.sample_every,
        "resume": args.resume,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "progress": not args.no_progress,
    }
    settings.update(parse_overrides(args.set))
    config = ID3TrainConfig.from_mapping(settings, source="facesynth train-generator")
    result = train_id3(config)
    terms = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.last_terms.items()))
    print(f"{result.pipeline_dir}: ID3Pipeline after {result.steps} steps ({terms})")
    return 0
