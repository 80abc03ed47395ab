"""``facesynth card``: write the README.md card of a dataset or model folder."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "write a Hub dataset card (or model card) README.md for a dataset or recognizer folder"
DESCRIPTION = """\
Dataset folders get a card from the manifest (generator, checkpoint and config hashes, sampler
settings, seeds), the shard schema and sizes (Hub YAML: license, task_categories, size_categories,
tags, configs, dataset_info) and quality.json + figures/ when `facesynth quality` has run. Model
folders get a card from backbone_config.json, a recipe file and a benchmarks JSON.

examples:
  facesynth card runs/param100 --repo-id me/facesynth-param100 --tags synthetic faces
  facesynth card runs/rec --kind model --training-data me/facesynth-param100 --license apache-2.0
      (bench results are read from runs/rec/bench/bench.json; --benchmarks-file FILE to name another)
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.cards import CardConfig

    return CliSpec(
        CardConfig,
        positional=("folder",),
        deprecated={
            "source_datasets": ["--source-dataset"],
            "tags": ["--tag"],
            "recipe_file": ["--recipe"],
            "benchmarks_file": ["--benchmarks"],
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.cards import run_card

    kind, path = run_card(config_from_args(cli_spec(), args))
    print(f"{kind} card: {path}")
    return 0
