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
  facesynth card runs/recognizer --kind model --benchmarks runs/recognizer/benchmarks.json \\
      --training-data me/facesynth-param100
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="dataset or model folder")
    parser.add_argument(
        "--kind", choices=["auto", "dataset", "model"], default="auto", help="default: detect"
    )
    parser.add_argument("--repo-id", help="Hub repo id the card refers to (for the loading snippet / links)")
    parser.add_argument(
        "--license", help="Hub licence id (default: cc-by-nc-4.0 if insightface-derived, else open)"
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
