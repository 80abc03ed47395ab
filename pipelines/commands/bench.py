"""``facesynth bench``: pair-verification accuracy and TAR@FAR of a recognizer on benchmark files."""

from __future__ import annotations

import argparse
from functools import cache

from facesynth.core.cli_args import CliSpec, add_config_arguments, config_from_args

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
  facesynth bench --method dctdp --model runs/dctdp --bin-dir ~/data/faces_emore --out runs/dctdp/bench
"""


@cache
def cli_spec() -> CliSpec:
    from facesynth.pipelines.bench import BenchConfig

    return CliSpec(BenchConfig, positional=("benchmarks",), deprecated={"method": ["--privacy"]})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, cli_spec())


def run(args: argparse.Namespace) -> int:
    from facesynth.pipelines.bench import run_bench
    from facesynth.recognizers.verification import format_result

    config = config_from_args(cli_spec(), args)
    result = run_bench(config)
    if config.method != "plain":
        print(result.files["markdown"].read_text(encoding="utf-8"))
        print(f"report: {result.files['markdown']} ({result.files['json']})")
        return 0
    for row in result.results:
        print(format_result(row))
    files = result.files
    print(f"report: {files['markdown']} ({files['json']}, {files['roc']})")
    return 0
