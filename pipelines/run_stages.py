"""The stage kinds a run file can use, each a thin adapter over its stage function and config.

Output types connect them: ``shards`` (a shard dataset folder), ``model`` (a trained recognizer or
privacy-method run folder), ``generator`` (an ID3Pipeline folder), ``benchmark`` (a ``.bin`` file),
``bench`` (a results table), ``attack``, ``quality``, ``card`` (the carded folder) and ``publish``.
An input that takes a ``model`` as an identity encoder receives ``torch:FOLDER``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from facesynth.core.config import StageConfig
from facesynth.pipelines.run_graph import InputSlot, RunContext, StageKind

logger = logging.getLogger(__name__)

SHARDS, MODEL, GENERATOR, BENCHMARK = "shards", "model", "generator", "benchmark"


class PairsStageConfig(StageConfig):
    """Verification pairs from the identities of a shard dataset, saved as an insightface ``.bin``."""

    dataset: Path
    out: Path
    num_pairs: int = Field(default=2000, gt=1)
    seed: int = Field(default=0, ge=0)


class CardStageConfig(StageConfig):
    """Dataset or model card options (``facesynth card``'s flags)."""

    folder: Path
    kind: Literal["auto", "dataset", "model"] = "auto"
    repo_id: str | None = None
    license: str | None = None
    pretty_name: str | None = Field(default=None, description="datasets only")
    source_datasets: list[str] = Field(default_factory=list, description="datasets only")
    tags: list[str] = Field(default_factory=list, description="datasets only")
    model_name: str | None = Field(default=None, description="models only")
    training_data: list[str] = Field(default_factory=list, description="models only")
    benchmarks_file: Path | None = Field(default=None, description="bench results JSON (models only)")
    base_model: str | None = Field(default=None, description="models only")


class PublishStageConfig(StageConfig):
    """Upload a carded folder to the Hub; a dry run (checks and plan only) unless ``upload`` is true."""

    folder: Path
    repo_id: str
    out: Path
    upload: bool = Field(default=False, description="really upload (default: dry run)")
    private: bool = False
    repo_type: Literal["auto", "dataset", "model"] = "auto"


def _generate(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.generate import generate_dataset

    result = generate_dataset(config, show_progress=ctx.show_progress)
    return {"images": result.manifest.num_rows if result.manifest else None, "shards": result.num_shards}


def _ingest(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.ingest import ingest

    result = ingest(config, show_progress=ctx.show_progress)
    return {"identities": result.num_identities, "images": result.num_images, "skipped": result.num_skipped}


def _train_generator(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.generators.id3_trainer import train_id3

    if ctx.resuming and (ctx.stage_dir / "checkpoints").is_dir() and config.resume is None:
        config = config.model_copy(update={"resume": "latest"})
    result = train_id3(config.model_copy(update={"progress": ctx.show_progress}))
    return {"steps": result.steps, "images_per_second": round(result.images_per_second, 1)}


def _train_recognizer(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.recognizers.trainer import train_recognizer

    update: dict[str, Any] = {"progress": ctx.show_progress}
    if ctx.resuming and (ctx.stage_dir / "checkpoints").is_dir() and config.resume is None:
        update["resume"] = "latest"
    result = train_recognizer(config.model_copy(update=update))
    summary: dict[str, Any] = {
        "method": config.method,
        "steps": result.steps,
        "classes": result.num_classes,
        "images_per_second": round(result.images_per_second, 1),
        "final_loss": round(float(result.final_loss), 4),
    }
    return summary


def _pairs(config: PairsStageConfig, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.pairs import write_pairs_bin

    config.out.mkdir(parents=True, exist_ok=True)
    write_pairs_bin(config.dataset, config.out / f"{ctx.stage_name}.bin", config.num_pairs, config.seed)
    return {"pairs": config.num_pairs}


def _subset(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.subset import write_subset

    manifest = write_subset(config)
    return {"identities": manifest.num_identities, "images": manifest.num_rows}


def _bench(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.bench_suite import run_bench_suite

    data = run_bench_suite(config, show_progress=ctx.show_progress)
    summary = {}
    for label, entry in data["models"].items():
        rows = entry["benchmarks"]
        row = rows.get("average") or next(iter(rows.values()))
        summary[f"accuracy_{label}"] = round(row["accuracy"], 4)
    return summary


def _attack(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.attack import run_attack_stage

    results = run_attack_stage(config.model_copy(update={"progress": ctx.show_progress}))
    summary: dict[str, Any] = {}
    for name, metrics in results["attackers"].items():
        for key in ("psnr", "ssim", "identity_tar"):
            if key in metrics:
                summary[f"{name}_{key}"] = round(float(metrics[key]), 4)
    return summary


def _quality(config: Any, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.quality import run_quality

    result = run_quality(config, show_progress=ctx.show_progress)
    inter = result.report.get("inter_class", {})
    return {"eer": inter.get("eer")} if inter.get("eer") is not None else {}


def _card(config: CardStageConfig, ctx: RunContext) -> dict[str, Any]:
    from facesynth.pipelines.cards import folder_kind, write_card

    kind = folder_kind(config.folder) if config.kind == "auto" else config.kind
    common = {"repo_id": config.repo_id, "license": config.license}
    if kind == "dataset":
        options = common | {
            "pretty_name": config.pretty_name,
            "source_datasets": config.source_datasets,
            "tags": config.tags,
        }
    else:
        benchmarks = config.benchmarks_file
        if benchmarks is not None and benchmarks.is_dir():  # a bench stage's folder: this model's results
            benchmarks = benchmarks / config.folder.name / "bench.json"
        options = common | {
            "model_name": config.model_name,
            "training_data": config.training_data,
            "benchmarks_file": benchmarks if benchmarks is not None and benchmarks.is_file() else None,
            "base_model": config.base_model,
        }
    path = write_card(config.folder, kind, **options)
    return {"card": str(path), "card_kind": kind}


def _publish(config: PublishStageConfig, ctx: RunContext) -> dict[str, Any]:
    from facesynth.core.atomic_io import write_json_atomic
    from facesynth.pipelines.publish import publish

    result = publish(
        config.folder,
        config.repo_id,
        private=config.private,
        dry_run=not config.upload,
        repo_type=config.repo_type,
    )
    plan = result.plan
    config.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "repo_id": plan.repo_id,
        "repo_type": plan.repo_type,
        "files": len(plan.files),
        "uploaded": result.uploaded,
        "url": result.url,
    }
    write_json_atomic(config.out / "publish.json", summary | {"warnings": plan.warnings})
    return summary


def _lazy(module: str, name: str):
    def load() -> type[StageConfig]:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


def _here(name: str):
    return lambda: globals()[name]


SHARD_LIKE = (SHARDS,)
MODEL_LIKE = (MODEL,)

STAGE_KINDS: dict[str, StageKind] = {
    kind.name: kind
    for kind in [
        StageKind(
            "ingest",
            SHARDS,
            _lazy("facesynth.pipelines.ingest", "IngestConfig"),
            {
                "source": InputSlot("source", SHARD_LIKE),
                "encoder": InputSlot("encoder", MODEL_LIKE, encoder=True),
            },
            _ingest,
            output_field="out",
            description="identity folders / HF dataset / shards -> aligned shards with embeddings",
        ),
        StageKind(
            "train_generator",
            GENERATOR,
            _lazy("facesynth.generators.id3_trainer", "ID3TrainConfig"),
            {
                "data": InputSlot("data", SHARD_LIKE, many=True),
                "identity_encoder": InputSlot("identity_encoder", MODEL_LIKE, encoder=True),
            },
            _train_generator,
            output_field="output_dir",
            output_of=lambda config, stage_dir: stage_dir / "pipeline",
            description="train ID3 on shards with embeddings",
            distributed=True,
        ),
        StageKind(
            "generate",
            SHARDS,
            _lazy("facesynth.pipelines.generate", "GenerateConfig"),
            {
                "pipeline": InputSlot("options.pipeline", (GENERATOR,)),
                "reference": InputSlot("options.reference", SHARD_LIKE, many=True),
                "identity_encoder": InputSlot("options.identity_encoder", MODEL_LIKE, encoder=True),
                "eval_encoder": InputSlot("options.eval_encoder", MODEL_LIKE, encoder=True),
            },
            _generate,
            output_field="out",
            description="a dataset from any registered generator",
            distributed=True,
        ),
        StageKind(
            "subset",
            SHARDS,
            _lazy("facesynth.pipelines.subset", "SubsetConfig"),
            {"dataset": InputSlot("dataset", SHARD_LIKE)},
            _subset,
            output_field="out",
            description="a label range of a dataset's identities (train / held-out splits)",
        ),
        StageKind(
            "pairs",
            BENCHMARK,
            _here("PairsStageConfig"),
            {"dataset": InputSlot("dataset", SHARD_LIKE)},
            _pairs,
            output_field="out",
            output_of=lambda config, stage_dir: stage_dir / f"{stage_dir.name}.bin",
            description="verification pairs (.bin) from a dataset's identities",
        ),
        StageKind(
            "train_recognizer",
            MODEL,
            _lazy("facesynth.recognizers.trainer", "RecognizerTrainConfig"),
            {
                "data": InputSlot("data", SHARD_LIKE, many=True),
                "benchmarks": InputSlot("benchmarks", (BENCHMARK,), many=True),
                "client_from": InputSlot("method_kwargs.client_from", MODEL_LIKE),
                "stage1_from": InputSlot("method_kwargs.stage1_from", MODEL_LIKE),
            },
            _train_recognizer,
            output_field="output_dir",
            defaults={"tensorboard": False},
            description="a recognizer (plain or privacy method)",
            distributed=True,
        ),
        StageKind(
            "bench",
            "bench",
            _lazy("facesynth.pipelines.bench_suite", "BenchSuiteConfig"),
            {
                "models": InputSlot("models", MODEL_LIKE, many=True),
                "benchmarks": InputSlot("benchmarks", (BENCHMARK,), many=True),
            },
            _bench,
            output_field="out",
            description="models x benchmark files -> one table",
        ),
        StageKind(
            "attack",
            "attack",
            _lazy("facesynth.pipelines.attack", "AttackStageConfig"),
            {
                "target": InputSlot("target", MODEL_LIKE),
                "public": InputSlot("public", SHARD_LIKE, many=True),
                "victims": InputSlot("victims", SHARD_LIKE, many=True),
                "encoder": InputSlot("encoder", MODEL_LIKE, encoder=True),
            },
            _attack,
            output_field="output_dir",
            description="recovery / identification attacks on a privacy model",
        ),
        StageKind(
            "quality",
            "quality",
            _lazy("facesynth.pipelines.quality", "QualityConfig"),
            {
                "dataset": InputSlot("dataset", SHARD_LIKE),
                "encoder": InputSlot("encoder", MODEL_LIKE, encoder=True),
                "reference": InputSlot("reference", SHARD_LIKE),
            },
            _quality,
            output_of=lambda config, stage_dir: Path(config.out or config.dataset) / "quality.json",
            description="dataset quality statistics and figures",
        ),
        StageKind(
            "card",
            "card",
            _here("CardStageConfig"),
            {
                "folder": InputSlot("folder", (SHARDS, MODEL)),
                "benchmarks": InputSlot("benchmarks_file", ("bench",)),
                "quality": InputSlot(None, ("quality",)),
            },
            _card,
            output_of=lambda config, stage_dir: config.folder,
            description="dataset or model card (README.md in the folder)",
        ),
        StageKind(
            "publish",
            "publish",
            _here("PublishStageConfig"),
            {"folder": InputSlot("folder", ("card",))},
            _publish,
            output_field="out",
            description="Hub upload (dry run unless upload: true)",
        ),
    ]
}
