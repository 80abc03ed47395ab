"""``facesynth train-recognizer``: train a face recognizer on one or more shard datasets."""

from __future__ import annotations

import argparse
import importlib
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "train a face recognizer (IResNet + ArcFace/CosFace + Partial FC) on shard datasets"
DESCRIPTION = """\
Trains on one or more shard folders (real or synthetic; several folders are mixed with distinct
classes) with the arcface_torch recipe by default: r50, ArcFace m=0.5 s=64, SGD lr 0.1 momentum 0.9
wd 5e-4, linear decay, horizontal flips, grad clip 5, 20 epochs. Runs unchanged under
`accelerate launch` (multi-GPU / multi-node; --mixed-precision bf16|fp16). Writes checkpoints to
OUT/checkpoints (resume with --resume latest), logs (train_log.csv, TensorBoard), and the final
OUT/backbone.safetensors + backbone_config.json (load with --encoder torch:OUT elsewhere).

examples:
  facesynth train-recognizer --data runs/param100 --out runs/rec --backbone r18 --epochs 5
  accelerate launch --num_processes 8 -m facesynth.pipelines.cli train-recognizer \\
      --data runs/id3-10k runs/real-ingested --out runs/rec-r50 --mixed-precision bf16 \\
      --sample-rate 0.3 --benchmarks benchmarks/lfw.bin --eval-every 2000
  facesynth train-recognizer --data runs/param100 --out runs/dctdp --method dctdp
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.recognizers.trainer import RecognizerTrainConfig

    return CliSpec(
        RecognizerTrainConfig,
        flags={"output_dir": ["--out"]},
        deprecated={
            "output_dir": ["--output-dir", "--output"],
            "method": ["--privacy"],
            "benchmarks": ["--benchmark"],
            "export_onnx": ["--no-onnx"],
        },
        help={
            "backbone": "registered backbone (r18 r34 r50 r100 r200 tiny)",
            "backbone_kwargs": "extra backbone option, repeatable",
            "method_kwargs": "extra method option, repeatable (two-stage privacy methods: stage=...)",
            "head": "margin head: arcface, cosface, combined, softmax",
            "margin_scale": "scale s of the margin head",
            "optimizer": "sgd (arcface_torch) or adamw",
            "momentum": "SGD momentum",
            "warmup_epochs": "linear warm-up length in epochs",
            "mixed_precision": "no, fp16 or bf16",
            "flip": "horizontal-flip augmentation",
            "num_workers": "DataLoader workers per process",
            "buffer_size": "shuffle buffer of the streaming reader (rows)",
            "seed": "seed of initialisation, shuffling and augmentation",
            "keep_checkpoints": "checkpoints kept (older ones are deleted)",
            "log_every": "steps between log lines",
            "eval_batch_size": "batch size of the verification runs",
            "find_unused_parameters": "DDP find_unused_parameters (methods with unused branches)",
            "progress": "show a progress bar",
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())
    # old spellings, kept working: -o GROUP.KEY=VALUE and --margin M
    parser.add_argument("-o", "--option", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--margin", type=float, default=None, help=argparse.SUPPRESS)


def _old_options(args: argparse.Namespace) -> dict:
    from facesynth.core.config import parse_overrides
    from facesynth.core.errors import ConfigError

    extra: dict[str, dict] = {}
    for key, value in parse_overrides(args.option).items():
        group, _, name = key.partition(".")
        if group not in ("backbone", "method", "head") or not name:
            raise ConfigError(f"-o {key}: expected backbone.KEY, method.KEY or head.KEY")
        extra.setdefault(f"{group}_kwargs", {})[name] = value
    if args.margin is not None:
        extra.setdefault("head_kwargs", {})["m"] = args.margin
    return extra


def run(args: argparse.Namespace) -> int:
    from facesynth.recognizers.trainer import train_recognizer

    config = config_from_args(cli_spec(), args, fixed=_old_options(args))
    if config.method != "plain":
        _import_privacy_methods()
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
