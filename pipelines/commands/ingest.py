"""``facesynth ingest``: identity folders / HF dataset / shards -> aligned shards with embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, help="identity-folder tree, HF dataset folder or shard folder")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--source-kind", default="auto", choices=["auto", "folders", "hf", "shards"])
    parser.add_argument("--aligner", default="none", help="none | dlib | insightface:PATH (default none)")
    parser.add_argument("--none-mode", default="crop", choices=["strict", "crop", "resize"])
    parser.add_argument("--encoder", default=None, help="encoder spec; without it no embedding column")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:K (default: auto)")
    parser.add_argument("--image-format", default="png", choices=["png", "jpeg"])
    parser.add_argument("--rows-per-shard", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--split", default="train")
    parser.add_argument("--min-images", type=int, default=1)
    parser.add_argument("--max-identities", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.ingest import REPORT_NAME, IngestConfig, ingest

    fields = IngestConfig.model_fields
    config = IngestConfig.from_mapping(
        {k: v for k, v in vars(args).items() if k in fields and v is not None}, source="ingest options"
    )
    result = ingest(config)
    if result.reused:
        print(f"{result.out}: already ingested with these settings")
        return 0
    print(
        f"{result.out}: {result.num_images} images of {result.num_identities} identities in "
        f"{result.num_shards} shard(s), {result.num_skipped} skipped (see {result.out / REPORT_NAME}), "
        f"{result.seconds:.1f} s"
    )
    return 0
