"""``facesynth ingest``: identity folders / HF dataset / shards -> aligned shards with embeddings."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

HELP = "align real face images into 112x112 shards and fill the embedding column"
DESCRIPTION = """\
Reads an identity-folder tree (SRC/<identity>/<images>, LFW/CASIA style), a Hugging Face dataset
folder (save_to_disk, image + label columns) or an existing facesynth shard folder; aligns every
image onto the ArcFace 5-point template (best face only), embeds it with the chosen encoder and
writes v1 shards plus facesynth.json. Unreadable files and images without a face are skipped,
counted and listed in OUT/ingest_report.json.

aligners: none (pre-aligned; --none-mode crop|resize|strict), dlib (extra 'dlib'),
          insightface:/path/det_10g.onnx (a detector you have; nothing is downloaded)
encoders: torch:RUN_OR_WEIGHTS, onnx:MODEL.onnx, insightface:MODEL.onnx, dlib

examples:
  facesynth ingest ~/data/lfw --out runs/lfw_shards --aligner dlib --encoder dlib
  facesynth ingest ~/data/casia_aligned --out runs/casia --encoder onnx:w600k_r50.onnx
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.ingest import IngestConfig

    return CliSpec(
        IngestConfig,
        positional=("source",),
        help={
            "source": "identity-folder tree, HF dataset folder or shard folder",
            "out": "output dataset folder",
            "source_kind": "what SOURCE is (auto: detect)",
            "none_mode": "with --aligner none: centre-crop, resize, or refuse (strict) non-112x112 images",
            "device": "encoder/aligner device: auto (CUDA when available), cpu, cuda, cuda:K",
            "image_format": "image encoding in the shards",
            "rows_per_shard": "images per output shard",
            "batch_size": "images per encoder call",
            "image_column": "image column of an HF dataset",
            "label_column": "label column of an HF dataset",
            "split": "split of an HF dataset",
            "max_identities": "keep only the first N identities",
        },
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.ingest import REPORT_NAME, ingest

    result = ingest(config_from_args(cli_spec(), args))
    if result.reused:
        print(f"{result.out}: already ingested with these settings")
        return 0
    print(
        f"{result.out}: {result.num_images} images of {result.num_identities} identities in "
        f"{result.num_shards} shard(s), {result.num_skipped} skipped (see {result.out / REPORT_NAME}), "
        f"{result.seconds:.1f} s"
    )
    return 0
