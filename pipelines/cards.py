"""The ``card`` stage: gather a folder's facts and write its ``README.md`` card.

A dataset folder (a ``facesynth.json`` manifest beside ``data/*.parquet``) gets a dataset card
from the manifest (generator, settings, hashes, seeds), the shard schema and sizes, and the
``quality.json`` report and figures when ``facesynth quality`` has run. A model folder (weights in
``*.safetensors`` / ``*.onnx``) gets a model card from ``backbone_config.json`` and the recipe,
benchmark and training-data facts found in the folder or given by the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import Field

from facesynth.core.config import StageConfig, load_config_file
from facesynth.core.errors import ConfigError, FacesynthError, ShardError
from facesynth.core.manifest import MANIFEST_NAME, Manifest
from facesynth.core.shard_format import read_schema
from facesynth.pipelines.quality import QUALITY_JSON

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
# Files a model folder may hold that describe it (first found wins).
RECIPE_FILES = (
    "training_config.json",
    "training_config.yaml",
    "train_config.json",
    "recipe.json",
    "recipe.yaml",
)
BENCHMARK_FILES = ("benchmarks.json", "bench.json", "benchmark.json")
# run facts in a bench report that are not metrics of the model
NOT_METRICS = ("source", "seconds", "flip", "model", "threshold", "thresholds")
# where `facesynth bench` and the runner put their reports inside a model folder (first found wins)
BENCHMARK_SUBFOLDERS = ("bench", "benchmarks", "eval")
BACKBONE_CONFIG = "backbone_config.json"

FolderKind = Literal["dataset", "model"]


class CardOptions(StageConfig):
    """What a card states beyond the folder's own files (the runner's ``card`` section)."""

    repo_id: str | None = Field(
        default=None, description="Hub repo id the card refers to (loading snippet, links)"
    )
    license: str | None = Field(
        default=None,
        description="Hub licence id of the card (unset: the source models' saved licence; 'unknown' when they "
        "state none, and publish refuses it)",
    )
    encoder_license: str | None = Field(
        default=None,
        description="datasets: licence of the models that made or embedded the data, when their files do not "
        "state it",
    )
    pretty_name: str | None = Field(default=None, description="datasets: title (unset: the folder name)")
    source_datasets: list[str] = Field(default_factory=list, description="datasets: source dataset ids")
    tags: list[str] = Field(default_factory=list, description="datasets: extra Hub tags")
    model_name: str | None = Field(
        default=None, description="models: model name (unset: from repo id or folder)"
    )
    training_data: list[str] = Field(default_factory=list, description="models: training dataset ids")
    recipe_file: Path | None = Field(
        default=None, description="models: training recipe file (YAML/TOML/JSON)"
    )
    benchmarks_file: Path | None = Field(
        default=None, description="models: benchmark results JSON (unset: bench/bench.json in the folder)"
    )
    base_model: str | None = Field(default=None, description="models: base model repo id")


class CardConfig(CardOptions):
    """Settings of ``facesynth card``: the folder, its kind, and the card options."""

    folder: Path = Field(description="dataset or model folder")
    kind: Literal["auto", "dataset", "model"] = Field(
        default="auto", description="card kind: auto detects it from the folder"
    )


DATASET_OPTIONS = ("repo_id", "license", "encoder_license", "pretty_name", "source_datasets", "tags")
MODEL_OPTIONS = (
    "repo_id",
    "license",
    "model_name",
    "training_data",
    "recipe_file",
    "benchmarks_file",
    "base_model",
)


def folder_kind(folder: str | Path) -> FolderKind:
    """``dataset`` for a shard folder (manifest or ``data/*.parquet``), ``model`` for one with weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FacesynthError(f"{folder}: not a folder")
    if (folder / MANIFEST_NAME).is_file() or any((folder / "data").glob("*.parquet")):
        return "dataset"
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.onnx")):
        return "model"
    raise FacesynthError(
        f"{folder}: neither a dataset (no {MANIFEST_NAME} or data/*.parquet) nor a model folder "
        "(no *.safetensors or *.onnx)"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FacesynthError(f"{path}: cannot read JSON ({exc})") from None


def dataset_card_facts(
    folder: str | Path,
    *,
    repo_id: str | None = None,
    pretty_name: str | None = None,
    license: str | None = None,
    source_datasets: Sequence[str] = (),
    tags: Sequence[str] = (),
    encoder_license: str | None = None,
):
    """The :class:`~facesynth.data_cards.dataset_card.DatasetCardFacts` of a shard folder."""
    from datasets import Features

    from facesynth.core.shard_reader import dataset_files
    from facesynth.data_cards.dataset_card import DatasetCardFacts

    folder = Path(folder)
    manifest = Manifest.read(folder)
    files = [folder / record.file for record in manifest.shards]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ShardError(f"{folder}: shards listed in the manifest are missing: {missing[:5]}")
    files = files or dataset_files(folder)
    schema = read_schema(files[0])
    features = Features.from_arrow_schema(schema)
    uncompressed = 0
    for file in files:
        meta = pq.ParquetFile(file).metadata
        uncompressed += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    quality = None
    figures: dict[str, str] = {}
    quality_path = folder / QUALITY_JSON
    if quality_path.is_file():
        quality = _read_json(quality_path)
        figures = {
            name: rel for name, rel in (quality.get("figures") or {}).items() if (folder / rel).is_file()
        }
    else:
        logger.warning(
            "%s: no %s; the card will have no statistics (run `facesynth quality` first)",
            folder,
            QUALITY_JSON,
        )
    producer = manifest.producer or {}
    stage_config = dict(producer.get("config") or {})
    return DatasetCardFacts(
        pretty_name=pretty_name or folder.resolve().name,
        num_examples=manifest.num_rows,
        num_identities=manifest.num_identities,
        features=features,
        num_bytes=uncompressed,
        download_size=sum(f.stat().st_size for f in files),
        repo_id=repo_id,
        license=license,
        generator=producer.get("generator"),
        generator_config=producer.get("generator_config") or {},
        stage_config=stage_config,
        config_hash=manifest.config_hash,
        seed=stage_config.get("seed"),
        image_format=manifest.image_format,
        embedding_dim=manifest.embedding_dim,
        created_at=manifest.created_at,
        facesynth_version=manifest.facesynth_version,
        quality=quality,
        figures=figures,
        source_datasets=list(source_datasets),
        tags=list(tags),
        encoder_license=encoder_license,
    )


def _metric_columns(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One benchmark's scalar metrics as table columns: ``tar_at_far`` becomes ``TAR@FAR=x`` columns,
    nested mappings of scalars become ``key sub`` columns, ROC arrays and other lists are left out."""
    columns: dict[str, Any] = {}
    for key, value in entry.items():
        if key in NOT_METRICS:
            continue
        if key == "tar_at_far" and isinstance(value, Mapping):
            for far, item in value.items():
                columns[f"TAR@FAR={far}"] = item.get("tar") if isinstance(item, Mapping) else item
        elif isinstance(value, Mapping):
            for sub, item in value.items():
                if isinstance(item, int | float | str | bool) or item is None:
                    columns[f"{key} {sub}"] = item
        elif isinstance(value, int | float | str | bool) or value is None:
            columns[key] = value
    return columns


def _benchmarks_from(data: Any, source: Path) -> dict[str, dict[str, Any]]:
    """Accept ``{bench: {metric: value}}``, a list of ``{"benchmark"/"name": bench, metric: value}``
    or ``facesynth bench``'s ``bench.json``; every value in the result is a scalar."""
    if isinstance(data, Mapping) and "benchmarks" in data:
        data = data["benchmarks"]
    if isinstance(data, Mapping):
        out = {}
        for bench, metrics in data.items():
            if not isinstance(metrics, Mapping):
                raise FacesynthError(f"{source}: benchmark {bench!r} must map metric names to values")
            out[str(bench)] = _metric_columns(metrics)
        return out
    if isinstance(data, list):
        out = {}
        for item in data:
            if not isinstance(item, Mapping) or not ({"benchmark", "name"} & set(item)):
                raise FacesynthError(f"{source}: each benchmark entry needs a 'benchmark' or 'name' field")
            name = str(item.get("benchmark", item.get("name")))
            out[name] = _metric_columns({k: v for k, v in item.items() if k not in ("benchmark", "name")})
        return out
    raise FacesynthError(f"{source}: benchmarks must be a mapping or a list, got {type(data).__name__}")


def find_benchmark_files(folder: Path) -> list[Path]:
    """Benchmark results of a model folder: in the folder itself, else in its ``bench/``-like subfolders."""
    for place in (folder, *(folder / sub for sub in BENCHMARK_SUBFOLDERS)):
        found = [place / name for name in BENCHMARK_FILES if (place / name).is_file()]
        if found:
            return found[:1]
    return sorted(p for p in folder.glob("*/bench.json") if p.is_file())


def model_card_facts(
    folder: str | Path,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    license: str | None = None,
    training_data: Sequence[str] = (),
    recipe_file: str | Path | None = None,
    benchmarks_file: str | Path | None = None,
    base_model: str | None = None,
):
    """The :class:`~facesynth.data_cards.model_card.ModelCardFacts` of a recognizer folder."""
    from facesynth.data_cards.model_card import ModelCardFacts

    folder = Path(folder)
    backbone = _read_json(folder / BACKBONE_CONFIG) if (folder / BACKBONE_CONFIG).is_file() else {}
    recipe: dict[str, Any] = {}
    recipe_path = (
        Path(recipe_file)
        if recipe_file
        else next((folder / n for n in RECIPE_FILES if (folder / n).is_file()), None)
    )
    if recipe_path is not None:
        recipe = load_config_file(recipe_path)
    elif backbone:
        recipe = {"backbone": backbone}
    bench_paths = [Path(benchmarks_file)] if benchmarks_file else find_benchmark_files(folder)
    benchmarks: dict[str, dict[str, Any]] = {}
    for bench_path in bench_paths:
        benchmarks.update(_benchmarks_from(_read_json(bench_path), bench_path))
    if not benchmarks:
        logger.warning(
            "%s: no benchmark results (looked for %s here and in %s/); run `facesynth bench ... --out %s/bench`",
            folder,
            "/".join(BENCHMARK_FILES),
            "/, ".join(BENCHMARK_SUBFOLDERS),
            folder,
        )
    data = list(training_data) or [
        str(d) for d in recipe.get("datasets", recipe.get("data", []) or []) if isinstance(d, str)
    ]
    weights = sorted(p.name for p in folder.glob("*.safetensors"))
    onnx = sorted(p.name for p in folder.glob("*.onnx"))
    return ModelCardFacts(
        model_name=model_name or (repo_id.split("/")[-1] if repo_id else folder.resolve().name),
        architecture=backbone.get("backbone"),
        embedding_dim=backbone.get("num_features") or backbone.get("embedding_dim"),
        training_data=data,
        recipe=recipe,
        benchmarks=benchmarks,
        license=license,
        base_model=base_model,
        repo_id=repo_id,
        weights_file=weights[0] if weights else None,
        onnx_file=onnx[0] if onnx else None,
    )


def check_repo_id(repo_id: str) -> None:
    """Refuse a Hub repo id that the Hub would refuse (``NAMESPACE/NAME``), before anything is written."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("expected NAMESPACE/NAME")
    except HFValidationError as exc:
        raise FacesynthError(f"--repo-id {repo_id!r} is not a valid Hub repo id ({exc})") from None


def card_options(kind: FolderKind, options: CardOptions) -> dict[str, Any]:
    """The options that apply to a ``kind`` card; one set for the other kind is refused, naming it."""
    wanted = DATASET_OPTIONS if kind == "dataset" else MODEL_OPTIONS
    defaults = CardOptions()
    stray = [
        name
        for name in CardOptions.model_fields
        if name not in wanted and getattr(options, name) != getattr(defaults, name)
    ]
    if stray:
        flags = ", ".join("--" + name.replace("_", "-") for name in stray)
        raise ConfigError(f"{flags}: not used by a {kind} card (only {', '.join(wanted)})")
    return {name: getattr(options, name) for name in wanted}


def write_card(folder: str | Path, kind: FolderKind | Literal["auto"] = "auto", **options: Any) -> Path:
    """Write ``folder/README.md`` for a dataset or model folder; returns its path.

    ``options`` are :class:`CardOptions` fields, validated before anything is read or written.
    """
    checked = CardOptions.from_mapping(options, source="card options")
    if checked.repo_id:
        check_repo_id(checked.repo_id)
    from facesynth.data_cards.dataset_card import write_dataset_card
    from facesynth.data_cards.model_card import write_model_card

    folder = Path(folder)
    kind = folder_kind(folder) if kind == "auto" else kind
    chosen = card_options(kind, checked)
    if kind == "dataset":
        path = write_dataset_card(dataset_card_facts(folder, **chosen), folder)
    else:
        path = write_model_card(model_card_facts(folder, **chosen), folder)
    logger.info("%s card written: %s", kind, path)
    return path


def run_card(config: CardConfig) -> tuple[FolderKind, Path]:
    """The card stage: write the card of ``config.folder``; returns its kind and path."""
    kind = folder_kind(config.folder) if config.kind == "auto" else config.kind
    options = config.model_dump(include=config.model_fields_set & set(CardOptions.model_fields))
    return kind, write_card(config.folder, kind, **options)
