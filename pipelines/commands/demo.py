"""``facesynth demo``: the built-in end-to-end run, offline on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the built-in demo end to end (parametric faces -> recognizer -> bench -> quality -> card)"
DESCRIPTION = """\
Generates 120 parametric identities x 10 images and 40 unseen identities for evaluation, trains a
tiny IResNet with ArcFace on CPU, benchmarks it on pairs of the unseen identities, computes dataset
quality and writes a dataset card. Needs no downloads. Rerunning resumes.

example:
  facesynth demo --run-dir runs/demo
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)"
    )
    parser.add_argument("--skip", action="append", default=None, help="leave out a stage (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.commands.run import run_with_config

    return run_with_config(None, args)
