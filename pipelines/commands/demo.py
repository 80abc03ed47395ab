"""``facesynth demo``: the built-in end-to-end run (the ``demo`` recipe), offline on CPU."""

from __future__ import annotations

import argparse

HELP = "run the built-in demo: parametric faces -> ingest -> ID3 -> recognizers (plain + DCTDP) -> bench, attack, cards"
DESCRIPTION = """\
The mission's chain on the built-in testbed, offline on CPU: parametric "real" faces, an identity
encoder trained on them, ingest with embeddings and attributes, a small ID3 trained on them, an ID3
dataset of new identities, a recognizer and a DCTDP privacy variant trained on it, verification on
unseen identities, a recovery attack on the DCTDP model, dataset quality, dataset and model cards,
a dry-run publish. Ends with RUN_DIR/report.md and report.html and the result table printed here.
About 14 minutes on 2 idle CPU cores; --quick runs the same graph at CI size (under 3 minutes).
Rerunning resumes; `facesynth run --print-recipe demo` shows the settings.

examples:
  facesynth demo --run-dir runs/demo
  facesynth demo --quick --run-dir runs/demo-quick
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from facesynth.pipelines.commands.run import add_run_options

    add_run_options(parser)
    parser.add_argument("--quick", action="store_true", help="CI size (the recipe's 'quick' profile)")


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.commands.run import run_with_config

    if args.run_dir is None and args.quick:
        from pathlib import Path

        args.run_dir = Path("runs/demo-quick")
    return run_with_config("demo", args, profile="quick" if args.quick else None)
