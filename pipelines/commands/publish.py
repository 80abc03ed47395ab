"""``facesynth publish``: validate a dataset or model folder and upload it to the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="dataset or model folder")
    parser.add_argument("--repo-id", required=True, help="NAMESPACE/NAME on the Hub")
    parser.add_argument(
        "--repo-type", choices=["auto", "dataset", "model"], default="auto", help="default: detect"
    )
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and list the upload; no network call"
    )
    parser.add_argument("--commit-message", help="commit message (default: 'Upload dataset with facesynth')")


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.publish import publish

    result = publish(
        args.folder,
        args.repo_id,
        private=args.private,
        dry_run=args.dry_run,
        repo_type=args.repo_type,
        commit_message=args.commit_message,
    )
    if args.dry_run:
        print(result.plan.describe())
        print("dry run: nothing was uploaded")
    else:
        print(f"uploaded {len(result.plan.files)} files to {result.url}")
    return 0
