"""``facesynth verify``: check a dataset folder (manifest, checksums, schema, rows, images)."""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path

from pydantic import Field

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args
from facesynth.core.config import StageConfig

HELP = "check a shard dataset against its manifest; exit 1 on any problem"
DESCRIPTION = """\
Checks that DIR/facesynth.json parses, every listed shard exists with its recorded sha256 and row
count, has the v1 schema and labels in range, no unlisted shards are present, and images decode.

example:
  facesynth verify runs/param100
"""


class VerifyConfig(StageConfig):
    """Settings of ``facesynth verify`` (an integrity check of a dataset folder, not a stage)."""

    dataset: Path = Field(description="dataset folder")
    image_stride: int = Field(default=1, ge=1, description="decode every k-th image only (1: all of them)")


@cache
def cli_spec() -> CliSpec:
    return CliSpec(VerifyConfig, positional=("dataset",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())


def run(args: argparse.Namespace) -> int:
    from facesynth.core.integrity import verify_dataset

    config = config_from_args(cli_spec(), args)
    problems = verify_dataset(config.dataset, image_stride=config.image_stride)
    if problems:
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"{config.dataset}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{config.dataset}: ok")
    return 0
