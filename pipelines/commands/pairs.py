"""``facesynth pairs``: turn a shard dataset of held-out identities into a ``.bin`` benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build a verification benchmark (.bin, genuine + impostor pairs) from a shard dataset"
DESCRIPTION = """\
Draws NUM_PAIRS pairs (half genuine, half impostor, seeded) from the images of a shard dataset and
writes them in insightface's .bin format, which `facesynth bench` and `train-recognizer
--benchmarks` read like LFW. Use identities the recognizer never saw in training.

example:
  facesynth pairs runs/eval_faces --out runs/eval_pairs.bin --num-pairs 3000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="shard dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="output .bin file")
    parser.add_argument("--num-pairs", type=int, default=3000, help="total pairs (default 3000)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from facesynth.core.errors import ConfigError
    from facesynth.pipelines.pairs import write_pairs_bin

    if args.num_pairs < 2:
        raise ConfigError(f"--num-pairs: bad value {args.num_pairs} (need at least 2)")
    path = write_pairs_bin(args.dataset, args.out, args.num_pairs, args.seed)
    print(f"{path}: written")
    return 0
