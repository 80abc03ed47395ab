"""The ``bench`` stage: verification accuracy and TAR@FAR of an encoder on benchmark files.

One config (:class:`BenchConfig`) and one function (:func:`run_bench`) used by ``facesynth bench``
and the runner. Protocol as arcface_torch's: flip-TTA embedding sum, L2 norm, 10-fold threshold
search, plus TAR@FAR from the ROC (``recognizers/verification.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError
from facesynth.recognizers.benchmark_files import STANDARD_BENCHMARKS


class BenchConfig(StageConfig):
    """Settings of ``facesynth bench``."""

    benchmarks: list[Path] = Field(
        default_factory=list, description=".bin files or folders with an LFW-format pairs.txt"
    )
    model: str = Field(
        description="encoder spec: torch:RUN_OR_WEIGHTS, onnx:MODEL.onnx, insightface:..., dlib"
    )
    bin_dir: Path | None = Field(default=None, description="folder holding <name>.bin benchmarks")
    names: list[str] = Field(
        default_factory=lambda: list(STANDARD_BENCHMARKS), description="benchmark names looked for in bin_dir"
    )
    out: Path = Field(description="report folder (bench.json, bench.md, roc.png)")
    batch_size: int = Field(default=64, ge=1, description="images per encoder call")
    flip: bool = Field(default=True, description="add the mirrored image's embedding (flip TTA)")
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda, cuda:K")
    aligner: str | None = Field(
        default=None, description="align unaligned pair images first: dlib or insightface:PATH"
    )
    no_face: Literal["error", "center"] = Field(
        default="error",
        description="with an aligner, a photo without a face stops the run (error) or is centre-cropped (center)",
    )
    method: str = Field(
        default="plain",
        description="the model's recognition method: plain, or a trained privacy method (dctdp, ..., or auto) "
        "evaluated through protect -> recognize, mean +- std over seeds",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, description="query seeds (privacy)"
    )
    progress: bool = Field(default=True, description="show progress bars")


@dataclass
class BenchResult:
    results: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)


def benchmark_paths(config: BenchConfig) -> list[Path]:
    """The benchmark files of ``config``: those listed, then those found in ``bin_dir``."""
    from facesynth.recognizers.benchmark_files import find_benchmarks

    paths = list(config.benchmarks)
    if config.bin_dir is not None:
        if not config.bin_dir.is_dir():
            raise FacesynthError(f"{config.bin_dir}: --bin-dir folder not found")
        found = find_benchmarks(config.bin_dir, config.names)
        if not found:
            raise FacesynthError(f"{config.bin_dir}: none of {', '.join(config.names)} .bin files found")
        paths += found
    if not paths:
        raise FacesynthError("no benchmarks given (pass .bin files / pairs folders or --bin-dir)")
    return paths


def run_bench(config: BenchConfig) -> BenchResult:
    """Evaluate ``config.model`` on every benchmark and write the report into ``config.out``."""
    from facesynth.recognizers.benchmark_files import load_verification_set
    from facesynth.recognizers.verification import evaluate_benchmark, write_report

    benchmarks = [load_verification_set(p) for p in benchmark_paths(config)]
    device = None if config.device == "auto" else config.device
    if config.aligner:
        from facesynth.recognizers.alignment import build_aligner

        aligner = build_aligner(config.aligner, device=device)
        for benchmark in benchmarks:
            benchmark.aligner, benchmark.no_face = aligner, config.no_face
    if config.method != "plain":
        from facesynth.privacy.evaluation import bench_privacy

        files = bench_privacy(
            config.model,
            benchmarks,
            config.out,
            None if config.method == "auto" else config.method,
            config.seeds,
            config.batch_size,
            config.flip,
            device,
            config.progress,
        )
        return BenchResult([], files)
    from facesynth.recognizers.encoders import load_encoder

    encoder = load_encoder(config.model, device=device)
    results = [
        evaluate_benchmark(
            encoder, b, batch_size=config.batch_size, flip=config.flip, show_progress=config.progress
        )
        for b in benchmarks
    ]
    files = write_report(results, config.out, model=config.model, extra={"flip": config.flip})
    return BenchResult(results, files)
