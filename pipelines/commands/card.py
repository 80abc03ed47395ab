"""``facesynth card``: write the README.md card of a dataset or model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a Hub dataset card (or model card) README.md for a dataset or recognizer folder"
DESCRIPTION = """\
Dataset folders get a card from the manifest (generator, checkpoint and config hashes, sampler
settings, seeds), the shard schema and sizes (Hub YAML: license, task_categories, size_categories,
tags, configs, dataset_info) and quality.json + figures/ when `facesynth quality` has run. Model
folders get a card from backbone_config.json, a recipe file and a benchmarks JSON.

examples:
  facesynth card runs/param100 --repo-id me/facesynth-param100
  facesynth card runs/rec --kind model --training-data me/facesynth-param100 --license apache-2.0
      (bench results are read from runs/rec/bench/bench.json; --benchmarks FILE to name another)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="dataset or model folder")
    parser.add_argument(
        "--kind", choices=["auto", "dataset", "model"], default="auto", help="default: detect"
    )
    parser.add_argument("--repo-id", help="Hub repo id the card refers to (for the loading snippet / links)")
    parser.add_argument(
        "--license",
        help="Hub licence id of the card (default: the source models' saved licence; 'unknown' when "
        "they state none, and publish refuses it)",
    )
    parser.add_argument(
        "--encoder-license",
        help="licence of the models that made or embedded the data, when their files do not state it "
        "(datasets only; default: read from the models' saved metadata)",
    )
    parser.add_argument("--pretty-name", help="dataset title (datasets only; default: the folder name)")
    parser.add_argument(
        "--source-dataset", action="append", default=[], help="source dataset id (repeatable)"
    )
    parser.add_argument("--tag", action="append", default=[], help="extra tag (repeatable; datasets only)")
    parser.add_argument("--model-name", help="model name (models only)")
    parser.add_argument("--training-data", action="append", default=[], help="training dataset (repeatable)")
    parser.add_argument("--recipe", type=Path, help="training recipe file (YAML/TOML/JSON; models only)")
    parser.add_argument("--benchmarks", type=Path, help="benchmark results JSON (models only)")
    parser.add_argument("--base-model", help="base model repo id (models only)")


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.cards import folder_kind, write_card

    kind = folder_kind(args.folder) if args.kind == "auto" else args.kind
    if kind == "dataset":
        options = {
            "repo_id": args.repo_id,
            "license": args.license,
            "pretty_name": args.pretty_name,
            "source_datasets": args.source_dataset,
            "tags": args.tag,
            "encoder_license": args.encoder_license,
        }
    else:
        options = {
            "repo_id": args.repo_id,
            "license": args.license,
            "model_name": args.model_name,
            "training_data": args.training_data,
            "recipe_file": args.recipe,
            "benchmarks_file": args.benchmarks,
            "base_model": args.base_model,
        }
    path = write_card(args.folder, kind, **options)
    print(f"{kind} card: {path}")
    return 0
