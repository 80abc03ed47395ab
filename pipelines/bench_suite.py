"""The run's ``bench`` stage: several models on several verification benchmarks -> one table.

Synthetic-face papers report LFW, CFP-FP, AgeDB-30, CALFW and CPLFW and their average; ``bin_dir``
picks up those ``.bin`` files from a folder (the ones present), explicit ``benchmarks`` add any
other ``.bin`` file or pairs folder. Each model goes through ``facesynth bench``'s own stage function
(:func:`facesynth.pipelines.bench.run_bench`); a run folder holding a privacy method is evaluated
through its protected path (protect -> recognize, mean over query seeds).

Writes ``OUT/<model>/bench.json`` (+ ``bench.md``, ``roc.png``) per model, which a model card reads,
and ``OUT/table.json`` / ``OUT/table.md`` / ``OUT/roc.png`` across all models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from facesynth.core.atomic_io import atomic_write, write_json_atomic
from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError
from facesynth.recognizers.benchmark_files import STANDARD_BENCHMARKS


class BenchSuiteConfig(StageConfig):
    """Settings of the run's ``bench`` stage."""

    models: list[str] = Field(min_length=1, description="encoder specs (torch:RUN, onnx:FILE) or run folders")
    benchmarks: list[str] = Field(default_factory=list, description=".bin files or folders with pairs.txt")
    bin_dir: str | None = Field(
        default=None, description="folder holding lfw.bin, cfp_fp.bin, ... (those present)"
    )
    names: list[str] = Field(
        default_factory=lambda: list(STANDARD_BENCHMARKS), description="names looked for in bin_dir"
    )
    out: str = Field(description="report folder")
    batch_size: int = Field(default=64, gt=0)
    flip: bool = True
    device: str = "auto"
    privacy_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


def model_label(spec: str) -> str:
    """A short, file-safe name for a model spec (the run folder's name)."""
    path = spec.split(":", 1)[1] if re.match(r"^[a-z]+:", spec) and not Path(spec).exists() else spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).name or path) or "model"


def _privacy_method_name(spec: str) -> str | None:
    """The method name when ``spec`` is a run folder holding a privacy method, else None."""
    folder = Path(spec[len("torch:") :] if spec.startswith("torch:") else spec)
    config = folder / "method_config.json"
    if not config.is_file():
        return None
    method = json.loads(config.read_text(encoding="utf-8")).get("method", "plain")
    return None if method == "plain" else str(method)


def _row(result: dict[str, Any], accuracy_std: float | None = None) -> dict[str, Any]:
    tars = {far: e["tar"] for far, e in result["tar_at_far"].items()}
    return {
        "accuracy": float(result["accuracy"]),
        "accuracy_std": float(result["accuracy_std"] if accuracy_std is None else accuracy_std),
        "tar_at_far": tars,
        "auc": float(result["auc"]),
        "num_pairs": int(result["num_pairs"]),
    }


def run_bench_suite(config: BenchSuiteConfig, show_progress: bool = False) -> dict[str, Any]:
    """Evaluate every model on every benchmark; write the per-model and combined reports."""
    from facesynth.pipelines.bench import BenchConfig, run_bench
    from facesynth.recognizers.verification import plot_roc

    out = Path(config.out)
    table: dict[str, dict[str, Any]] = {}
    curves: list[dict[str, Any]] = []
    names: list[str] = []
    for spec in config.models:
        label = model_label(spec)
        if label in table:
            raise FacesynthError(f"bench: two models are both called {label!r}; rename one run folder")
        method = _privacy_method_name(spec)
        bench = BenchConfig(
            benchmarks=[Path(b) for b in config.benchmarks],
            model=spec if ":" in spec or method else f"torch:{spec}",
            bin_dir=config.bin_dir,
            names=config.names,
            out=out / label,
            batch_size=config.batch_size,
            flip=config.flip,
            device=config.device,
            method=method or "plain",
            seeds=config.privacy_seeds,
            progress=show_progress,
        )
        result = run_bench(bench)
        rows: dict[str, Any] = {}
        if method is not None:
            report = result.files["report"]
            first_seed = report["runs"][str(report["seeds"][0])]
            for summary, run in zip(report["summary"], first_seed, strict=True):
                rows[summary["name"]] = {
                    **_row(run),
                    "accuracy": summary["accuracy"]["mean"],
                    "accuracy_std": summary["accuracy"]["std"],
                    "tar_at_far": {f: e["mean"] for f, e in summary["tar_at_far"].items()},
                    "auc": summary["auc"]["mean"],
                }
                curves.append({**run, "name": f"{label} {run['name']}"})
            # the card reads OUT/<model>/bench.json: same shape as a plain model's
            write_json_atomic(
                out / label / "bench.json",
                {"model": spec, "method": method, "benchmarks": [{"name": k, **v} for k, v in rows.items()]},
            )
        else:
            for r in result.results:
                rows[r["name"]] = _row(r)
                curves.append({**r, "name": f"{label} {r['name']}"})
        names = names or list(rows)
        if len(rows) > 1:
            rows["average"] = {
                "accuracy": sum(r["accuracy"] for r in rows.values()) / len(rows),
                "accuracy_std": sum(r["accuracy_std"] for r in rows.values()) / len(rows),
            }
        table[label] = {"spec": spec, "method": method or "plain", "benchmarks": rows}
    data = {"models": table, "benchmarks": names}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "table.json", data)
    with atomic_write(out / "table.md", "w") as handle:
        handle.write(table_markdown(data) + "\n")
    plot_roc(curves, out / "roc.png", title="ROC")
    return data


def table_markdown(data: dict[str, Any]) -> str:
    """Models as rows, benchmarks (and their average) as columns: accuracy in %."""
    names = list(data["benchmarks"])
    if len(names) > 1:
        names.append("average")
    lines = [
        "| model | method | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for label, entry in data["models"].items():
        cells = []
        for name in names:
            row = entry["benchmarks"].get(name)
            cells.append(
                "-" if row is None else f"{100 * row['accuracy']:.2f} +- {100 * row['accuracy_std']:.2f}"
            )
        lines.append(f"| {label} | {entry['method']} | " + " | ".join(cells) + " |")
    fars = sorted(
        {
            f
            for e in data["models"].values()
            for r in e["benchmarks"].values()
            for f in r.get("tar_at_far", {})
        }
    )
    if fars:
        lines += [
            "",
            "| model | benchmark | " + " | ".join(f"TAR@FAR={f} (%)" for f in fars) + " | AUC |",
            "|---|---|" + "---|" * (len(fars) + 1),
        ]
        for label, entry in data["models"].items():
            for name, row in entry["benchmarks"].items():
                if "tar_at_far" in row:
                    tars = " | ".join(f"{100 * row['tar_at_far'].get(f, float('nan')):.2f}" for f in fars)
                    lines.append(f"| {label} | {name} | {tars} | {row['auc']:.4f} |")
    return "\n".join(lines)
