"""``facesynth verify``: check a dataset folder (manifest, checksums, schema, rows, images)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "check a shard dataset against its manifest; exit 1 on any problem"
DESCRIPTION = """\
Checks that DIR/facesynth.json parses, every listed shard exists with its recorded sha256 and row
count, has the v1 schema and labels in range, no unlisted shards are present, and images decode.

example:
  facesynth verify runs/param100
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="dataset folder")
    parser.add_argument(
        "--image-stride", type=int, default=1, help="decode every k-th image only (default 1: all of them)"
    )


def run(args: argparse.Namespace) -> int:
    from facesynth.core.integrity import verify_dataset

    problems = verify_dataset(args.dataset, image_stride=args.image_stride)
    if problems:
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"{args.dataset}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.dataset}: ok")
    return 0
