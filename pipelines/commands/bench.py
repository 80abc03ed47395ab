"""``facesynth bench``: pair-verification accuracy and TAR@FAR of a recognizer on benchmark files."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "verification benchmarks (LFW, CFP-FP, AgeDB-30, ...): 10-fold accuracy, TAR@FAR, ROC, report"
DESCRIPTION = """\
Evaluates an identity encoder with arcface_torch's protocol: flip-TTA embedding sum, L2 norm,
10-fold threshold search (accuracy +- std), plus TAR@FAR=1e-3/1e-4 from the ROC. Benchmarks are
insightface .bin files (read with a restricted unpickler) or folders with an LFW-format pairs.txt;
--bin-dir picks up lfw, cfp_fp, agedb_30, calfw, cplfw .bin files that exist in a folder.
Writes OUT/bench.json, OUT/bench.md (with an average row) and OUT/roc.png.

encoders: torch:RUN_OR_WEIGHTS, onnx:MODEL.onnx, insightface:MODEL.onnx, dlib

examples:
  facesynth bench --model torch:runs/r50 --bin-dir ~/data/faces_emore --out runs/r50/bench
  facesynth bench --model onnx:w600k_r50.onnx ~/data/lfw.bin ~/data/my_pairs/ --out bench_w600k
  facesynth bench --privacy dctdp --model runs/dctdp --bin-dir ~/data/faces_emore --out runs/dctdp/bench
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmarks", nargs="*", type=Path, help=".bin files or folders with pairs.txt")
    parser.add_argument("--model", required=True, help="encoder spec, e.g. torch:runs/r50 or onnx:model.onnx")
    parser.add_argument("--bin-dir", type=Path, default=None, help="folder holding <name>.bin benchmarks")
    parser.add_argument(
        "--names",
        default="lfw,cfp_fp,agedb_30,calfw,cplfw",
        help="benchmark names looked for in --bin-dir (comma-separated)",
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-flip", action="store_true", help="do not add the mirrored image's embedding")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:K (default: auto)")
    parser.add_argument(
        "--aligner",
        default=None,
        help="align unaligned pair images first: dlib or insightface:PATH (default: images must be aligned 112x112)",
    )
    parser.add_argument(
        "--no-face",
        default="error",
        choices=["error", "center"],
        help="with --aligner, a photo without a detected face stops the run (error) or is centre-cropped "
        "and counted in the report (center)",
    )
    parser.add_argument(
        "--privacy",
        nargs="?",
        const="auto",
        default=None,
        metavar="METHOD",
        help="--model is a trained privacy method run (dctdp, partialface, ...): evaluate through "
        "protect -> recognize, mean +- std over --seeds; writes OUT/bench_privacy.{json,md}",
    )
    parser.add_argument("--seeds", default="0,1,2", help="query seeds for --privacy (comma-separated, >= 3)")


def run(args: argparse.Namespace) -> int:
    from facesynth.core.errors import FacesynthError
    from facesynth.recognizers.benchmark_files import find_benchmarks, load_verification_set
    from facesynth.recognizers.encoders import load_encoder
    from facesynth.recognizers.verification import evaluate_benchmark, format_result, write_report

    paths = list(args.benchmarks)
    if args.bin_dir is not None:
        if not args.bin_dir.is_dir():
            raise FacesynthError(f"{args.bin_dir}: --bin-dir folder not found")
        found = find_benchmarks(args.bin_dir, [n.strip() for n in args.names.split(",") if n.strip()])
        if not found:
            raise FacesynthError(f"{args.bin_dir}: none of {args.names} .bin files found")
        paths += found
    if not paths:
        raise FacesynthError("no benchmarks given (pass .bin files / pairs folders or --bin-dir)")
    benchmarks = [load_verification_set(p) for p in paths]
    if args.aligner:
        from facesynth.recognizers.alignment import build_aligner

        aligner = build_aligner(args.aligner, device=args.device)
        for benchmark in benchmarks:
            benchmark.aligner, benchmark.no_face = aligner, args.no_face
    if args.privacy:
        from facesynth.privacy.evaluation import bench_privacy

        seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
        files = bench_privacy(
            args.model,
            benchmarks,
            args.out,
            args.privacy,
            seeds,
            args.batch_size,
            not args.no_flip,
            args.device,
            True,
        )
        print(files["markdown"].read_text(encoding="utf-8"))
        print(f"report: {files['markdown']} ({files['json']})")
        return 0
    encoder = load_encoder(args.model, device=args.device)
    results = []
    for benchmark in benchmarks:
        result = evaluate_benchmark(
            encoder, benchmark, batch_size=args.batch_size, flip=not args.no_flip, show_progress=True
        )
        print(format_result(result))
        results.append(result)
    files = write_report(results, args.out, model=args.model, extra={"flip": not args.no_flip})
    print(f"report: {files['markdown']} ({files['json']}, {files['roc']})")
    return 0
