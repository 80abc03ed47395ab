"""Dataset cards: ``README.md`` with Hub YAML metadata and a body saying how the data was made.

The card is built from plain facts (:class:`DatasetCardFacts`: counts, features, generator settings,
a quality report) with ``huggingface_hub``'s :class:`~huggingface_hub.DatasetCardData` and
:meth:`~huggingface_hub.DatasetCard.from_template` on ``templates/dataset_card.md``. The YAML
carries ``configs`` (so ``datasets`` loads the Parquet shards as one ``train`` split) and
``dataset_info`` (features and split sizes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facesynth.data_cards.quality_report import TEMPLATES, fmt, summary_rows

SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]
TASK_CATEGORIES = ["image-classification", "image-feature-extraction"]
BASE_TAGS = ["face-recognition", "synthetic", "facesynth"]
# Words in a generator/encoder config that mean insightface / arcface_torch weights were involved
# (not the word "arcface" alone: that also names the margin loss);
# their models and training data are licensed for non-commercial research only.
NONCOMMERCIAL_MARKERS = (
    "insightface",
    "arcface_torch",
    "antelopev2",
    "buffalo_",
    "w600k",
    "glint360k",
    "ms1mv",
    "webface",
)

ID3_CITATION = """@inproceedings{xu2024id3,
  title     = {{ID3}: Identity-Preserving-yet-Diversified Diffusion Models for Synthetic Face Recognition},
  author    = {Xu, Jianqing and Li, Shen and Wu, Jiaying and Xiong, Miao and Deng, Ailin and Ji, Jiazhen and
               Huang, Yuge and Mu, Guodong and Feng, Wenjie and Ding, Shouhong and Hooi, Bryan},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024}
}"""


def size_category(num_examples: int) -> str:
    """The Hub ``size_categories`` value for a row count."""
    for bound, name in SIZE_CATEGORIES:
        if num_examples < bound:
            return name
    return "n>1T" if num_examples >= 10**12 else "1B<n<10B"


def mentions_noncommercial_source(*configs: Any) -> bool:
    """True when any config mentions insightface-derived models (non-commercial research only)."""
    text = json.dumps(configs, default=str).lower()
    return any(marker in text for marker in NONCOMMERCIAL_MARKERS)


# keys of a generator / stage config whose value names a model that made or embedded the data
MODEL_KEYS = ("encoder", "identity_encoder", "pipeline", "model", "checkpoint", "vae")
SPEC_PREFIXES = ("torch:", "onnx:", "insightface:")
UNKNOWN_LICENSE = "unknown"
# files in a model folder that may state its licence (``license:`` in a card's YAML or a JSON key)
LICENSE_FILES = (
    "README.md",
    "facesynth_model.json",
    "config.json",
    "backbone_config.json",
    "model_index.json",
)


def model_sources(*configs: Any) -> list[str]:
    """The model specs (``torch:PATH``, ``onnx:PATH``, a pipeline folder, ...) named in nested configs."""
    found: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k).lower())
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and node and (node.startswith(SPEC_PREFIXES) or key in MODEL_KEYS):
            found.append(node)

    for config in configs:
        walk(config)
    return list(dict.fromkeys(found))


def saved_license(spec: str) -> str | None:
    """The licence a model's own saved files state (card YAML or a ``license`` JSON key), else None."""
    target = Path(spec.split(":", 1)[1] if spec.startswith(SPEC_PREFIXES) else spec).expanduser()
    folder = target if target.is_dir() else target.parent
    for name in LICENSE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if name == "README.md":
                head = text.split("---", 2)[1] if text.startswith("---") else ""
                value = (yaml.safe_load(head) or {}).get("license") if head else None
            else:
                value = json.loads(text).get("license")
        except (OSError, ValueError, yaml.YAMLError, AttributeError, IndexError):
            continue
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def find_checkpoint_hash(config: Any) -> str | None:
    """The first string under a key naming a checkpoint / weights / pipeline hash (or fingerprint) in
    a nested generator config, e.g. the ID3 generator's ``pipeline_fingerprint``."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            lowered = str(key).lower()
            names_digest = any(word in lowered for word in ("hash", "sha", "fingerprint"))
            names_weights = any(word in lowered for word in ("checkpoint", "weights", "model", "pipeline"))
            if isinstance(value, str) and names_digest and names_weights:
                return value
        for value in config.values():
            found = find_checkpoint_hash(value)
            if found:
                return found
    return None


@dataclass
class DatasetCardFacts:
    """Everything a dataset card states; plain values gathered by the caller."""

    pretty_name: str
    num_examples: int
    num_identities: int
    features: Any  # datasets.Features
    num_bytes: int | None = None
    download_size: int | None = None
    data_files: str = "data/train-*.parquet"
    repo_id: str | None = None
    license: str | None = None  # None: chosen from the sources (see resolve_license)
    generator: str | None = None
    generator_config: Mapping[str, Any] = field(default_factory=dict)
    stage_config: Mapping[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    checkpoint_hash: str | None = None
    seed: int | None = None
    image_format: str | None = None
    embedding_dim: int | None = None
    created_at: str | None = None
    facesynth_version: str | None = None
    quality: Mapping[str, Any] | None = None
    figures: Mapping[str, str] = field(default_factory=dict)
    source_datasets: Sequence[str] = ()
    tags: Sequence[str] = ()
    noncommercial: bool | None = None  # None: detected from the configs
    encoder_license: str | None = None  # licence of the models that made the data, when stated by the user

    def sources(self) -> list[str]:
        """Models named in the generator / stage settings (their licences bind the data)."""
        return model_sources(self.generator_config, self.stage_config)

    def resolve_noncommercial(self) -> bool:
        if self.noncommercial is not None:
            return self.noncommercial
        return mentions_noncommercial_source(self.generator_config, self.stage_config, self.quality or {})

    def resolve_license(self) -> str:
        """The licence the card states, from what is known, never guessed from a file name.

        ``license`` given, else ``encoder_license`` given, else the licence the source models' own
        saved files state (all the same), else cc-by-nc-4.0 when insightface models are named, else
        ``unknown`` when any model made the data; data made by no model (the parametric renderer)
        defaults to cc-by-4.0. ``publish`` refuses ``unknown``.
        """
        if self.license:
            return self.license
        if self.encoder_license:
            return self.encoder_license
        if self.resolve_noncommercial():
            return "cc-by-nc-4.0"
        sources = self.sources()
        if not sources:
            return "cc-by-4.0"
        saved = {saved_license(spec) for spec in sources}
        if len(saved) == 1 and None not in saved:
            return saved.pop()
        return UNKNOWN_LICENSE


def card_data(facts: DatasetCardFacts):
    """The :class:`~huggingface_hub.DatasetCardData` (YAML header) of a dataset card."""
    from datasets import DatasetInfo, SplitInfo
    from datasets.splits import SplitDict
    from huggingface_hub import DatasetCardData

    splits = SplitDict()
    splits.add(
        SplitInfo(name="train", num_bytes=int(facts.num_bytes or 0), num_examples=int(facts.num_examples))
    )
    info = DatasetInfo(
        features=facts.features,
        splits=splits,
        download_size=facts.download_size,
        dataset_size=facts.num_bytes,
    )
    tags = list(dict.fromkeys([*BASE_TAGS, *([facts.generator] if facts.generator else []), *facts.tags]))
    return DatasetCardData(
        license=facts.resolve_license(),
        pretty_name=facts.pretty_name,
        size_categories=[size_category(facts.num_examples)],
        task_categories=list(TASK_CATEGORIES),
        annotations_creators=["machine-generated"],
        source_datasets=list(facts.source_datasets) or None,
        tags=tags,
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": facts.data_files}],
                "default": True,
            }
        ],
        dataset_info=info._to_yaml_dict(),
    )


def build_dataset_card(facts: DatasetCardFacts, template_path: str | Path | None = None):
    """Render the :class:`~huggingface_hub.DatasetCard` for ``facts``."""
    from huggingface_hub import DatasetCard

    data = card_data(facts)
    quality = facts.quality or {}
    generator_yaml = yaml.safe_dump(
        json.loads(json.dumps(dict(facts.generator_config), default=str)), sort_keys=True
    )
    stage = {k: v for k, v in dict(facts.stage_config).items() if v is not None}
    stage_yaml = yaml.safe_dump(json.loads(json.dumps(stage, default=str)), sort_keys=True)
    return DatasetCard.from_template(
        data,
        template_path=str(template_path or TEMPLATES / "dataset_card.md"),
        facts=facts,
        license_id=facts.resolve_license(),
        noncommercial=facts.resolve_noncommercial(),
        sources=facts.sources(),
        checkpoint_hash=facts.checkpoint_hash or find_checkpoint_hash(facts.generator_config),
        generator_yaml=generator_yaml.strip(),
        stage_yaml=stage_yaml.strip() if facts.stage_config else "",
        quality=quality,
        quality_rows=summary_rows(quality) if quality else [],
        leakage=quality.get("leakage"),
        load_name=facts.repo_id or "path/to/dataset",
        is_id3=(facts.generator or "").lower().startswith("id3"),
        id3_citation=ID3_CITATION,
        fmt=fmt,
    )


def write_dataset_card(facts: DatasetCardFacts, folder: str | Path) -> Path:
    """Write ``folder/README.md`` atomically (refusing one facesynth did not write); return its path."""
    from facesynth.core.ownership import owned_write

    card = build_dataset_card(facts)
    path = Path(folder) / "README.md"
    with owned_write(path) as handle:  # never replaces a user's README.md
        handle.write(str(card).encode("utf-8"))
    return path
