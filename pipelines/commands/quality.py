"""``facesynth quality``: dataset-quality statistics, figures and a JSON + Markdown report."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "measure identity consistency, separability, diversity and leakage of a shard dataset"
DESCRIPTION = """\
Computes, from embeddings of an evaluation encoder (or the stored embedding column when no
--encoder is given): cosine to class centre / condition / anchor and identity flips, C_intra,
greedy class-centre uniqueness, impostor statistics, Fisher discriminant ratio, EER and FNMR at
FMR 1e-2 / 1e-3, embedding and attribute spread, and with --reference the leakage against real
identities (max cosine of every image and centre to every real centre). Writes quality.json,
quality.md and figures/ (sample grid, genuine/impostor histograms) into --out (default: DIR).

examples:
  facesynth quality runs/param100 --encoder torch:runs/recognizer
  facesynth quality runs/id3-10k --encoder onnx:models/w600k_r50.onnx --reference data/casia-shards \\
      --leak-threshold 0.35
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.quality import QualityConfig

    return CliSpec(
        QualityConfig,
        positional=("dataset",),
        help={
            "dataset": "shard dataset folder",
            "batch_size": "images per encoder call",
            "grid_identities": "identities in the sample grid",
            "grid_images": "images per identity in the sample grid",
            "metrics.consistency_threshold": "C_intra cosine to the class centre",
            "metrics.flip_threshold": "identity-flip cosine",
            "metrics.uniqueness_threshold": "greedy class-centre uniqueness cosine (0.7 = DCFace r=0.3)",
            "metrics.impostor_threshold": "impostor 'too close' cosine",
            "metrics.leak_threshold": "leakage cosine against the reference identities",
            "metrics.impostor_pairs": "sampled impostor pairs",
            "metrics.max_genuine_for_roc": "cap on genuine pairs for the ROC",
            "metrics.top_k_leaks": "closest leaks listed in the report",
            "metrics.block_size": "rows per block of the similarity computation",
            "metrics.seed": "seed of the impostor sample",
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show progress bars (default: on)",
    )


def run(args: argparse.Namespace) -> int:
    from facesynth.data_cards.quality_report import summary_rows
    from facesynth.pipelines.quality import run_quality

    config = config_from_args(cli_spec(), args)
    result = run_quality(config, show_progress=args.progress)
    for row in summary_rows(result.report):
        print(f"{row['group']:<13} {row['metric']:<34} {row['value']}")
    print(f"report: {result.json_path} and {result.markdown_path}")
    return 0
