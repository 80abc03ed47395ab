"""``facesynth run CONFIG``: a graph of stages from one config file (or a named recipe)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run a staged pipeline from one config file or recipe (resumable: finished stages are skipped)"
DESCRIPTION = """\
A run file names its stages; each stage has a kind, settings (that stage's own config fields) and
inputs (config fields taken from an upstream stage's output, by that stage's name):

  run_dir: runs/mine
  stages:
    faces: {kind: generate, settings: {generator: parametric, identities: 100, per_identity: 20}}
    model: {kind: train_recognizer, inputs: {data: [faces]}, settings: {backbone: tiny}}

Stage kinds: ingest, train_generator, generate, pairs, train_recognizer, bench, attack, quality, card,
publish (a dry run unless its settings say upload: true). The whole file is checked before any
stage runs. RUN_DIR/stages.json records each finished stage with a hash of its settings and of
everything upstream: a rerun skips what still matches and resumes the rest; changing a setting
reruns that stage and what is downstream of it. RUN_DIR/run.log holds the log, RUN_DIR/report.md
and report.html the summary (sample grids, ROC curves, result tables).

Recipes shipped with facesynth: demo, orl, privacy-comparison, paper-scale (--list-recipes).

examples:
  facesynth run --print-recipe demo > my_run.yaml
  facesynth run my_run.yaml
  facesynth run paper-scale --set stages.real_faces.settings.source=/data/casia --run-dir runs/paper
  facesynth run my_run.yaml --check            # validate only
  facesynth run my_run.yaml --profile quick --skip publish
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_config", nargs="?", help="YAML/TOML/JSON run file, or a recipe name")
    add_run_options(parser)
    parser.add_argument("--profile", default=None, help="apply a named profile of the run file (e.g. quick)")
    parser.add_argument("--print-recipe", metavar="NAME", default=None, help="print a recipe and exit")
    parser.add_argument("--print-demo-config", action="store_true", help="print the demo recipe and exit")
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--check", action="store_true", help="validate the whole file and list the stages")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``demo``."""
    parser.add_argument("--run-dir", type=Path, default=None, help="override the file's run_dir")
    parser.add_argument(
        "--set",
        dest="set_values",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="set a dotted key, e.g. stages.id3.settings.max_steps=100 (repeatable; YAML values)",
    )
    parser.add_argument(
        "--skip", action="append", default=None, help="leave out a stage or kind (repeatable)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the stages' own progress bars")


def run_with_config(path: str | None, args: argparse.Namespace, profile: str | None = None) -> int:
    from facesynth.pipelines.run import load_run_config, plan, run_pipeline

    overrides: dict = {}
    if args.run_dir is not None:
        overrides["run_dir"] = args.run_dir
    if args.skip:
        overrides["skip"] = args.skip
    config = load_run_config(path, overrides, settings=args.set_values, profile=profile)
    if getattr(args, "check", False):
        for stage in plan(config):
            inputs = ", ".join(f"{k}<-{v}" for k, v in stage.spec.inputs.items())
            print(f"{stage.name:20s} {stage.spec.kind:16s} {inputs}")
        print(f"{config.run_dir}: {len(config.stages)} stages, settings valid")
        return 0
    run_pipeline(config, show_progress=not args.no_progress)
    return 0


def run(args: argparse.Namespace) -> int:
    from facesynth.core.errors import ConfigError
    from facesynth.pipelines.run import recipe_names, recipe_text

    if args.list_recipes:
        print("\n".join(recipe_names()))
        return 0
    if args.print_recipe or args.print_demo_config:
        print(recipe_text(args.print_recipe or "demo"), end="")
        return 0
    if args.run_config is None:
        raise ConfigError(
            "give a run file or a recipe name (--list-recipes; --print-recipe demo for an example)"
        )
    return run_with_config(args.run_config, args, profile=args.profile)
