"""``facesynth attack``: white-box recovery attack on a privacy method (or the RGB baseline)."""

from __future__ import annotations

import argparse
import logging
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

logger = logging.getLogger(__name__)

HELP = "recovery attack on a privacy method's payloads: U-Net decoder + ridge inverse, PSNR/SSIM/identity leakage"
DESCRIPTION = """\
Trains two attackers on (payload, face) pairs made by running the target's client on the attacker's
public faces (identity-disjoint from the victims): a U-Net recovery decoder (L1, optional identity
loss) and a ridge-regression linear inverse. Then recovers the victims' faces from their payloads
and reports PSNR, SSIM, identity leakage (cosine between an independent encoder's embeddings of
recovered and original faces), attack success (recovered face verified as the true identity at a
fixed FAR) and rank-1 identification, next to a no-information baseline (the public mean face).
Use --target rgb for the unprotected baseline. Writes OUT/attack.json, OUT/attack.md, OUT/samples.png.

examples:
  facesynth attack --target runs/minusface-s2 --public runs/public --victims runs/victims \\
      --encoder torch:runs/rgb-encoder --out runs/attack-minusface
  facesynth attack --target rgb --public runs/param200 --public-fraction 0.5 \\
      --encoder torch:runs/rec --out runs/attack-rgb

Without --encoder, identity leakage, attack success and rank-1 cannot be scored (PSNR/SSIM only).
"""


MISSING_ENCODER = (
    "identity leakage, attack success and rank-1 need an independent identity encoder: add "
    "--encoder torch:RUN (e.g. the recognizer trained in the README's Quickstart, torch:runs/rec) or "
    "--encoder onnx:MODEL.onnx"
)


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.attack import AttackStageConfig

    return CliSpec(
        AttackStageConfig,
        flags={"output_dir": ["--out"]},
        deprecated={"output_dir": ["--output-dir", "--output"]},
        help={
            "output_dir": "report folder (attack.json, attack.md, samples.png)",
            "max_public_images": "cap on the attacker's public images",
            "max_victim_images": "cap on the victims' images",
            "decoder_steps": "training steps of the U-Net recovery decoder",
            "decoder_widths": "channel widths of the decoder's levels",
            "decoder_lr": "decoder learning rate",
            "decoder_lr_schedule": "decoder learning-rate schedule after the warm-up (cosine or constant)",
            "multi_query_ks": "randomised targets: also attack with k payloads of each face, for each k",
            "batch_size": "decoder batch size",
            "ridge": "also fit the ridge-regression linear inverse",
            "ridge_mode": "ridge inverse per local patch (local) or on the pooled payload (global)",
            "ridge_alpha": "ridge regularisation strength",
            "ridge_kernel": "patch side of the local ridge inverse",
            "ridge_positions": "sampled positions per image (local)",
            "ridge_pool": "average pooling of the payload (global)",
            "far": "false-accept rate of the attack-success threshold",
            "seed": "seed of the split, sampling and decoder",
            "progress": "show progress bars",
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.attack import markdown_report, run_attack_stage

    config = config_from_args(cli_spec(), args)
    if not config.encoder:
        logger.warning("no --encoder: %s", MISSING_ENCODER)
    results = run_attack_stage(config)
    print(markdown_report(results))
    if not config.encoder:
        print(f"note: {MISSING_ENCODER}.")
    if config.target != "rgb":
        print("note: for the unprotected baseline, run the same command with --target rgb.")
    print(f"report: {config.output_dir}/attack.md (attack.json, samples.png)")
    return 0
