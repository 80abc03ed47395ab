"""``facesynth generate``: make a synthetic dataset of Parquet shards."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "generate a synthetic face dataset into Parquet shards (sharded, deterministic, resumable)"
DESCRIPTION = """\
Generate N identities x M images with a registered generator into DIR/data/*.parquet plus a
manifest (DIR/facesynth.json). Every image is seeded from (--seed, identity, index), so the result
is the same for any number of processes; rerun the same command after a crash to finish the dataset.

examples:
  facesynth generate --generator parametric --identities 100 --per-identity 20 --out runs/param100
  accelerate launch --num_processes 4 -m facesynth.pipelines.cli generate \\
      --generator id3 -o pipeline=runs/id3/pipeline --identities 10000 --per-identity 50 --out runs/id3-10k
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.generate import GenerateConfig

    return CliSpec(
        GenerateConfig,
        flags={"options": ["-o", "--option"]},
        help={
            "generator": "registered generator name (parametric, id3, ...)",
            "out": "output dataset folder",
            "seed": "global seed; every image is seeded from (seed, identity, index)",
            "image_format": "image encoding in the shards",
            "options": "generator option, repeatable (e.g. -o pipeline=DIR -o id_guidance=0.5)",
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())
    parser.add_argument(
        "--generator-config", metavar="FILE", help="YAML/TOML/JSON file of generator options (-o wins)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show a progress bar (default: on)",
    )


def run(args: argparse.Namespace) -> int:
    from facesynth.core.config import load_config_file
    from facesynth.pipelines.generate import generate_dataset

    config = config_from_args(cli_spec(), args)
    if args.generator_config:
        config.options = load_config_file(args.generator_config) | config.options
    result = generate_dataset(config, show_progress=args.progress)
    if result.manifest is not None:
        print(
            f"{result.out}: {result.manifest.num_rows} images of {result.manifest.num_identities} identities "
            f"in {result.num_shards} shards ({result.shards_reused} reused); "
            f"{result.images_written} generated here at {result.images_per_second:.1f} img/s"
        )
    return 0
