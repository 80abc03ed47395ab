"""``facesynth pairs``: turn a shard dataset of held-out identities into a ``.bin`` benchmark."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "build a verification benchmark (.bin, genuine + impostor pairs) from a shard dataset"
DESCRIPTION = """\
Draws NUM_PAIRS pairs (half genuine, half impostor, seeded) from the images of a shard dataset and
writes them in insightface's .bin format, which `facesynth bench` and `train-recognizer
--benchmarks` read like LFW. Use identities the recognizer never saw in training.

example:
  facesynth pairs runs/eval_faces --out runs/eval_pairs.bin --num-pairs 3000
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.pairs import PairsConfig

    return CliSpec(PairsConfig, positional=("dataset",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.pairs import run_pairs

    path = run_pairs(config_from_args(cli_spec(), args))
    print(f"{path}: written")
    return 0
