"""``facesynth quality``: dataset-quality statistics, figures and a JSON + Markdown report."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="shard dataset folder")
    parser.add_argument(
        "--encoder", help="evaluation encoder: torch:PATH, onnx:PATH, insightface:NAME or dlib"
    )
    parser.add_argument(
        "--reference", type=Path, help="shard dataset of real identities for the leakage check"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: the dataset folder)")
    parser.add_argument("--device", default="cpu", help="encoder device (default cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    parser.add_argument(
        "--flip-threshold", type=float, default=0.3, help="identity-flip cosine (default 0.3)"
    )
    parser.add_argument("--leak-threshold", type=float, default=0.3, help="leakage cosine (default 0.3)")
    parser.add_argument(
        "--uniqueness-threshold",
        type=float,
        default=0.7,
        help="uniqueness / C_intra cosine (default 0.7 = DCFace r=0.3)",
    )
    parser.add_argument(
        "--impostor-threshold", type=float, default=0.3, help="impostor 'too close' cosine (default 0.3)"
    )
    parser.add_argument(
        "--impostor-pairs", type=int, default=1_000_000, help="sampled impostor pairs (default 1e6)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the impostor sample (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from facesynth.data_cards.quality_report import summary_rows
    from facesynth.pipelines.quality import QualityConfig, run_quality

    config = QualityConfig.from_mapping(
        {
            "dataset": args.dataset,
            "encoder": args.encoder,
            "reference": args.reference,
            "out": args.out,
            "device": args.device,
            "batch_size": args.batch_size,
            "metrics": {
                "flip_threshold": args.flip_threshold,
                "leak_threshold": args.leak_threshold,
                "uniqueness_threshold": args.uniqueness_threshold,
                "consistency_threshold": args.uniqueness_threshold,
                "impostor_threshold": args.impostor_threshold,
                "impostor_pairs": args.impostor_pairs,
                "seed": args.seed,
            },
        },
        source="facesynth quality",
    )
    result = run_quality(config, show_progress=not args.no_progress)
    for row in summary_rows(result.report):
        print(f"{row['group']:<13} {row['metric']:<34} {row['value']}")
    print(f"report: {result.json_path} and {result.markdown_path}")
    return 0
