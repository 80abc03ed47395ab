"""``facesynth train-recognizer``: train a face recognizer on one or more shard datasets."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

HELP = "train a face recognizer (IResNet + ArcFace/CosFace + Partial FC) on shard datasets"
DESCRIPTION = """\
Trains on one or more shard folders (real or synthetic; several folders are mixed with distinct
classes) with the arcface_torch recipe by default: r50, ArcFace m=0.5 s=64, SGD lr 0.1 momentum 0.9
wd 5e-4, linear decay, horizontal flips, grad clip 5, 20 epochs. Runs unchanged under
`accelerate launch` (multi-GPU / multi-node; --mixed-precision bf16|fp16). Writes checkpoints to
OUT/checkpoints (resume with --resume latest), logs (train_log.csv, TensorBoard), and the final
OUT/backbone.safetensors + backbone_config.json (load with --encoder torch:OUT elsewhere).

examples:
  facesynth train-recognizer --data runs/param100 --output-dir runs/rec --backbone r18 --epochs 5
  accelerate launch --num_processes 8 -m facesynth.pipelines.cli train-recognizer \\
      --data runs/id3-10k runs/real-ingested --output-dir runs/rec-r50 --mixed-precision bf16 \\
      --sample-rate 0.3 --benchmark benchmarks/lfw.bin --eval-every 2000
  facesynth train-recognizer --data runs/param100 --output-dir runs/dctdp --privacy dctdp
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR", help="shard dataset folders")
    parser.add_argument("--output-dir", type=Path, required=True, help="run folder")
    parser.add_argument("--backbone", default="r50", help="registered backbone (r18 r34 r50 r100 r200 tiny)")
    parser.add_argument("--input-size", type=int, default=None, help="square input side (default: 112)")
    parser.add_argument(
        "--privacy",
        default="plain",
        metavar="METHOD",
        help="recognition method: plain (default) or a privacy variant (dctdp, duetface, partialface, minusface)",
    )
    parser.add_argument("--head", default="arcface", help="margin head: arcface, cosface, combined, softmax")
    parser.add_argument("--margin-scale", type=float, default=64.0, help="scale s (default 64)")
    parser.add_argument("--margin", type=float, default=None, help="margin m of arcface/cosface (0.5 / 0.4)")
    parser.add_argument("--sample-rate", type=float, default=1.0, help="Partial FC sampling rate (default 1)")
    parser.add_argument("--batch-size", type=int, default=128, help="per process (default 128)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after N steps (sets the LR schedule)"
    )
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--lr", type=float, default=None, help="default 0.1 (SGD) / 1e-3 (AdamW)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (SGD) / 0.1 (AdamW)")
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--grad-clip", type=float, default=5.0, help="max grad norm, 0 = off (default 5)")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=1,
        help="batches per optimizer step (effective batch = batch size x this x processes)",
    )
    parser.add_argument("--no-flip", action="store_true", help="turn off horizontal-flip augmentation")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per process")
    parser.add_argument("--seed", type=int, default=2048)
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="steps; 0 = only at the end")
    parser.add_argument("--keep-checkpoints", type=int, default=3)
    parser.add_argument("--resume", default=None, metavar="latest|DIR", help="resume from a checkpoint")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--benchmark",
        action="append",
        default=[],
        metavar="FILE",
        help=".bin or pairs.txt folder, repeatable",
    )
    parser.add_argument(
        "--eval-every", type=int, default=0, help="steps between verification; 0 = at the end"
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra options: backbone.KEY=V, method.KEY=V, head.KEY=V (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--no-onnx", action="store_true", help="skip writing backbone.onnx at the end (plain method)"
    )
    parser.add_argument("--no-tensorboard", action="store_true", help="CSV log only, no TensorBoard events")


def run(args: argparse.Namespace) -> int:
    from facesynth.core.config import parse_overrides
    from facesynth.core.errors import ConfigError
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    if args.privacy != "plain":
        _import_privacy_methods()

    extra = {"backbone": {}, "method": {}, "head": {}}
    for key, value in parse_overrides(args.option).items():
        group, _, name = key.partition(".")
        if group not in extra or not name:
            raise ConfigError(f"option {key!r}: expected backbone.KEY, method.KEY or head.KEY")
        extra[group][name] = value
    if args.margin is not None:
        extra["head"]["m"] = args.margin
    config = RecognizerTrainConfig.from_mapping(
        {
            "data": [str(d) for d in args.data],
            "output_dir": str(args.output_dir),
            "backbone": args.backbone,
            "backbone_kwargs": extra["backbone"],
            "input_size": args.input_size,
            "method": args.privacy,
            "method_kwargs": extra["method"],
            "head": args.head,
            "margin_scale": args.margin_scale,
            "head_kwargs": extra["head"],
            "sample_rate": args.sample_rate,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "momentum": args.momentum,
            "weight_decay": args.weight_decay,
            "warmup_epochs": args.warmup_epochs,
            "grad_clip": args.grad_clip,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "mixed_precision": args.mixed_precision,
            "flip": not args.no_flip,
            "num_workers": args.num_workers,
            "seed": args.seed,
            "checkpoint_every": args.checkpoint_every,
            "keep_checkpoints": args.keep_checkpoints,
            "resume": args.resume,
            "log_every": args.log_every,
            "benchmarks": [str(b) for b in args.benchmark],
            "eval_every": args.eval_every,
            "progress": not args.no_progress,
            "export_onnx": not args.no_onnx,
            "tensorboard": not args.no_tensorboard,
        },
        source="facesynth train-recognizer",
    )
    result = train_recognizer(config)
    if not result.is_main_process:
        return 0
    print(
        f"{result.run_dir}: {result.steps} steps on {result.num_classes} classes, "
        f"final loss {result.final_loss:.4f}, {result.images_per_second:.1f} images/s"
    )
    for row in result.evaluations[-len(config.benchmarks) :] if config.benchmarks else []:
        print(f"  {row['benchmark']}: accuracy {row['accuracy']:.4f}")
    return 0


def _import_privacy_methods() -> None:
    """Import every module of facesynth.privacy: privacy methods register themselves on import."""
    import pkgutil

    package = importlib.import_module("facesynth.privacy")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"facesynth.privacy.{info.name}")
