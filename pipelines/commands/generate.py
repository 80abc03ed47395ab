"""``facesynth generate``: make a synthetic dataset of Parquet shards."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generator", default="parametric", help="registered generator name (default: parametric)"
    )
    parser.add_argument("--identities", type=int, required=True, help="number of identities N")
    parser.add_argument("--per-identity", type=int, required=True, help="images per identity M")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    parser.add_argument("--shard-size", type=int, default=5000, help="target images per shard (default 5000)")
    parser.add_argument(
        "--image-format", choices=["png", "jpeg"], default="png", help="image encoding (default png)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="requests per generator call")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="generator option, repeatable (e.g. -o pipeline=DIR -o id_guidance=0.5)",
    )
    parser.add_argument("--generator-config", type=Path, help="YAML/TOML/JSON file of generator options")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from facesynth.core.config import load_config_file, parse_overrides
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset

    options = load_config_file(args.generator_config) if args.generator_config else {}
    options.update(parse_overrides(args.option))
    config = GenerateConfig.from_mapping(
        {
            "generator": args.generator,
            "identities": args.identities,
            "per_identity": args.per_identity,
            "out": args.out,
            "seed": args.seed,
            "shard_size": args.shard_size,
            "image_format": args.image_format,
            "batch_size": args.batch_size,
            "options": options,
        },
        source="facesynth generate",
    )
    result = generate_dataset(config, show_progress=not args.no_progress)
    if result.manifest is not None:
        print(
            f"{result.out}: {result.manifest.num_rows} images of {result.manifest.num_identities} identities "
            f"in {result.num_shards} shards ({result.shards_reused} reused); "
            f"{result.images_written} generated here at {result.images_per_second:.1f} img/s"
        )
    return 0
