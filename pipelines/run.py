"""``facesynth run CONFIG`` / ``facesynth demo``: every stage from one config file, resumable.

The stages run in order: generate the training and evaluation datasets, build verification pairs
from the evaluation identities, train a recognizer, benchmark it, measure dataset quality and
write the dataset card. Each finished stage is recorded in ``RUN_DIR/stages.json`` with the hash of
its settings *and* of everything upstream; a rerun skips stages whose hash still matches and
resumes the others (generation reuses finished shards, training resumes from its last checkpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from facesynth.core.atomic_io import config_hash, write_json_atomic
from facesynth.core.config import StageConfig, load_config_file

logger = logging.getLogger(__name__)

STAGES = ("generate_train", "generate_eval", "pairs", "train_recognizer", "bench", "quality", "card")


class DatasetSection(StageConfig):
    """A dataset to generate (the ``generate`` stage's settings without ``out``)."""

    generator: str = "parametric"
    identities: int = Field(gt=0)
    per_identity: int = Field(gt=0)
    seed: int = Field(default=0, ge=0)
    shard_size: int = Field(default=5000, gt=0)
    image_format: str = "png"
    options: dict[str, Any] = Field(default_factory=dict)


class PairsSection(StageConfig):
    num_pairs: int = Field(default=2000, gt=1)
    seed: int = 0


class RunConfig(StageConfig):
    """One file drives the whole pipeline; each section holds that stage's own settings."""

    run_dir: Path
    train_data: DatasetSection
    eval_data: DatasetSection
    pairs: PairsSection = Field(default_factory=PairsSection)
    train_recognizer: dict[str, Any] = Field(
        default_factory=dict, description="RecognizerTrainConfig fields except data/output_dir/benchmarks"
    )
    bench: dict[str, Any] = Field(default_factory=lambda: {"batch_size": 64})
    quality: dict[str, Any] = Field(
        default_factory=dict,
        description="QualityConfig fields except dataset/out; encoder 'trained' = our recognizer",
    )
    card: dict[str, Any] = Field(
        default_factory=dict, description="dataset card options (license, pretty_name, ...)"
    )
    skip: list[str] = Field(default_factory=list, description=f"stages to leave out, from {list(STAGES)}")


def builtin_config(name: str = "demo") -> dict[str, Any]:
    """A config shipped with the package (``pipelines/configs/<name>.yaml``)."""
    text = (
        resources.files("facesynth.pipelines").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")
    )
    import yaml

    return yaml.safe_load(text)


class _StageLedger:
    """``stages.json``: which stages finished, under which settings hash."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "stages.json"
        import json

        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def is_done(self, stage: str, digest: str) -> bool:
        return self.done.get(stage, {}).get("hash") == digest

    def mark(self, stage: str, digest: str, seconds: float, summary: dict[str, Any]) -> None:
        self.done[stage] = {"hash": digest, "seconds": round(seconds, 2), **summary}
        write_json_atomic(self.path, self.done)


def run_pipeline(config: RunConfig, *, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage of ``config``; returns the ledger of finished stages."""
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset

    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("facesynth").addHandler(handler)
    ledger = _StageLedger(run_dir)
    train_dir, eval_dir = run_dir / "train_data", run_dir / "eval_data"
    pairs_file = run_dir / "eval_pairs.bin"
    model_dir = run_dir / "recognizer"
    upstream = ""

    def stage(name: str, settings: Any, work: Callable[[], dict[str, Any]]) -> None:
        nonlocal upstream
        digest = config_hash({"settings": settings, "upstream": upstream})
        upstream = digest
        if name in config.skip:
            logger.info("stage %s: skipped by config", name)
            return
        if ledger.is_done(name, digest):
            logger.info("stage %s: already done with these settings", name)
            return
        logger.info("stage %s: running", name)
        started = time.perf_counter()
        summary = work() or {}
        ledger.mark(name, digest, time.perf_counter() - started, summary)
        logger.info("stage %s: done in %.1f s %s", name, time.perf_counter() - started, summary)

    def generate(section: DatasetSection, out: Path) -> dict[str, Any]:
        cfg = GenerateConfig.from_mapping(section.model_dump() | {"out": out}, source=f"{out.name} section")
        result = generate_dataset(cfg, show_progress=show_progress)
        return {"rows": result.manifest.num_rows if result.manifest else None}

    stage("generate_train", config.train_data.model_dump(), lambda: generate(config.train_data, train_dir))
    stage("generate_eval", config.eval_data.model_dump(), lambda: generate(config.eval_data, eval_dir))

    def pairs() -> dict[str, Any]:
        from facesynth.pipelines.pairs import write_pairs_bin

        write_pairs_bin(eval_dir, pairs_file, config.pairs.num_pairs, config.pairs.seed)
        return {"file": pairs_file.name}

    stage("pairs", config.pairs.model_dump(), pairs)

    def train() -> dict[str, Any]:
        from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

        settings = {"progress": show_progress} | config.train_recognizer
        if (model_dir / "checkpoints").is_dir():
            settings.setdefault("resume", "latest")
        cfg = RecognizerTrainConfig.from_mapping(
            settings
            | {"data": [str(train_dir)], "output_dir": str(model_dir), "benchmarks": [str(pairs_file)]},
            source="train_recognizer section",
        )
        result = train_recognizer(cfg)
        return {"steps": result.steps, "images_per_second": round(result.images_per_second, 1)}

    stage("train_recognizer", config.train_recognizer, train)

    def bench() -> dict[str, Any]:
        from facesynth.recognizers.benchmark_files import load_verification_set
        from facesynth.recognizers.encoders import load_encoder
        from facesynth.recognizers.verification import evaluate_benchmark, write_report

        encoder = load_encoder(f"torch:{model_dir}")
        result = evaluate_benchmark(
            encoder,
            load_verification_set(pairs_file, name="eval_pairs"),
            batch_size=config.bench.get("batch_size", 64),
        )
        write_report([result], run_dir / "bench", model=str(model_dir))
        return {"accuracy": round(float(result["accuracy"]), 4)}

    stage("bench", config.bench, bench)

    def quality() -> dict[str, Any]:
        from facesynth.pipelines.quality import QualityConfig, run_quality

        settings = dict(config.quality)
        if settings.get("encoder") == "trained":
            settings["encoder"] = f"torch:{model_dir}"
        cfg = QualityConfig.from_mapping(settings | {"dataset": train_dir}, source="quality section")
        run_quality(cfg, show_progress=show_progress)
        return {}

    stage("quality", config.quality, quality)

    def card() -> dict[str, Any]:
        from facesynth.pipelines.cards import write_card

        path = write_card(train_dir, "dataset", **config.card)
        return {"card": str(path.relative_to(run_dir))}

    stage("card", config.card, card)
    return ledger.done


def load_run_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a run config file (or the built-in demo) and apply top-level overrides."""
    data = builtin_config("demo") if path is None else load_config_file(path)
    data.update(overrides or {})
    return RunConfig.from_mapping(data, source=str(path or "built-in demo config"))
