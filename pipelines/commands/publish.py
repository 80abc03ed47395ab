"""``facesynth publish``: validate a dataset or model folder and upload it to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "validate a dataset/model folder, then create the Hub repo and upload it (resumable)"
DESCRIPTION = """\
Validates first, with no network: the manifest (every shard present with its sha256 and row
count), the README.md card (parses, licence, size_categories, configs match the shards), that
`datasets` loads the folder, and the Hub's limits (files per repo, entries per folder, file size).
Then creates the repo (exist_ok) and uploads with huggingface_hub's upload_folder; re-run the same
command to resume an interrupted upload. The token comes from HF_TOKEN or `hf auth login` and is
never printed. --dry-run prints exactly what would be uploaded and makes no network call.

examples:
  facesynth publish runs/param100 --repo-id me/facesynth-param100 --dry-run
  facesynth publish runs/param100 --repo-id me/facesynth-param100 --private
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.publish import PublishConfig

    return CliSpec(PublishConfig, positional=("folder",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.publish import run_publish

    config = config_from_args(cli_spec(), args)
    result = run_publish(config)
    if config.dry_run:
        print(result.plan.describe())
        print("dry run: nothing was uploaded")
    else:
        print(f"uploaded {len(result.plan.files)} files to {result.url}")
    return 0
