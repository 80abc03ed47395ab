"""Model cards for trained face recognizers: ``README.md`` with Hub YAML and a body stating the
training data, the recipe and a benchmark table.

Built from plain facts (:class:`ModelCardFacts`) with ``huggingface_hub``'s
:class:`~huggingface_hub.ModelCardData` and :meth:`~huggingface_hub.ModelCard.from_template` on
``templates/model_card.md``. Benchmark accuracies also go into the YAML as ``model-index`` eval
results, so the Hub shows them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facesynth.data_cards.dataset_card import mentions_noncommercial_source
from facesynth.data_cards.quality_report import TEMPLATES, fmt

BASE_TAGS = ["face-recognition", "facesynth", "synthetic-data"]
COUNT_COLUMNS = ("num_pairs", "pairs", "no_face_images", "no_face_pairs")  # counts, not eval results


@dataclass
class ModelCardFacts:
    """What a recognizer's card states; plain values gathered by the caller.

    ``benchmarks`` maps a benchmark name (``lfw``, ``cfp_fp``, ...) to a mapping of metric -> value,
    e.g. ``{"lfw": {"accuracy": 0.9945, "accuracy_std": 0.003}}``; accuracies are fractions in [0, 1].
    """

    model_name: str
    architecture: str | None = None
    embedding_dim: int | None = None
    training_data: Sequence[str] = ()  # dataset repo ids or folder names
    training_data_summary: str | None = None
    recipe: Mapping[str, Any] = field(default_factory=dict)
    benchmarks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    license: str | None = None
    base_model: str | None = None
    repo_id: str | None = None
    weights_file: str | None = None
    onnx_file: str | None = None
    tags: Sequence[str] = ()
    noncommercial: bool | None = None

    def resolve_noncommercial(self) -> bool:
        if self.noncommercial is not None:
            return self.noncommercial
        return mentions_noncommercial_source(self.recipe, list(self.training_data), self.base_model)

    def resolve_license(self) -> str:
        if self.license:
            return self.license
        return "cc-by-nc-4.0" if self.resolve_noncommercial() else "apache-2.0"


def is_hub_id(name: str) -> bool:
    """``namespace/name`` that is a valid Hub repo id and not a folder on this machine."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1 or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _eval_results(facts: ModelCardFacts) -> list:
    from huggingface_hub import EvalResult

    results = []
    for bench, metrics in facts.benchmarks.items():
        for metric, value in metrics.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and not metric.endswith("_std")
                and metric not in COUNT_COLUMNS
            ):
                results.append(
                    EvalResult(
                        task_type="image-feature-extraction",
                        task_name="Face verification",
                        dataset_type=bench,
                        dataset_name=bench,
                        metric_type=metric,
                        metric_name=f"{bench} {metric}",
                        metric_value=float(value),
                    )
                )
    return results


def card_data(facts: ModelCardFacts):
    """The :class:`~huggingface_hub.ModelCardData` (YAML header) of a model card."""
    from huggingface_hub import ModelCardData

    tags = list(
        dict.fromkeys([*BASE_TAGS, *([facts.architecture] if facts.architecture else []), *facts.tags])
    )
    results = _eval_results(facts)
    return ModelCardData(
        model_name=facts.model_name,
        license=facts.resolve_license(),
        library_name="pytorch",
        pipeline_tag="image-feature-extraction",
        tags=tags,
        datasets=[d for d in facts.training_data if is_hub_id(d)] or None,
        base_model=facts.base_model,
        eval_results=results or None,
        metrics=sorted({r.metric_type for r in results}) or None,
    )


def benchmark_table(benchmarks: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted rows (one per benchmark) of the benchmark table."""
    columns: list[str] = []
    for metrics in benchmarks.values():
        for name in metrics:
            if name not in columns:
                columns.append(name)
    rows = [[bench, *[fmt(metrics.get(c)) for c in columns]] for bench, metrics in benchmarks.items()]
    return columns, rows


def build_model_card(facts: ModelCardFacts, template_path: str | Path | None = None):
    """Render the :class:`~huggingface_hub.ModelCard` for ``facts``."""
    from huggingface_hub import ModelCard

    columns, rows = benchmark_table(facts.benchmarks)
    recipe_yaml = yaml.safe_dump(
        json.loads(json.dumps(dict(facts.recipe), default=str)), sort_keys=True
    ).strip()
    return ModelCard.from_template(
        card_data(facts),
        template_path=str(template_path or TEMPLATES / "model_card.md"),
        facts=facts,
        license_id=facts.resolve_license(),
        noncommercial=facts.resolve_noncommercial(),
        hub_data=[d for d in facts.training_data if is_hub_id(d)],
        recipe_yaml=recipe_yaml if facts.recipe else "",
        bench_columns=columns,
        bench_rows=rows,
        fmt=fmt,
    )


def write_model_card(facts: ModelCardFacts, folder: str | Path) -> Path:
    """Write ``folder/README.md`` atomically (refusing one facesynth did not write); return its path."""
    from facesynth.core.ownership import owned_write

    path = Path(folder) / "README.md"
    with owned_write(path) as handle:  # never replaces a user's README.md
        handle.write(str(build_model_card(facts)).encode("utf-8"))
    return path
