"""Dataset cards: the YAML parses with huggingface_hub's card classes and `datasets` honours its configs."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import load_dataset
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard

from facesynth.core.shard_format import ShardRow, features, rows_to_table, shard_name, write_shard
from facesynth.data_cards.dataset_card import (
    DatasetCardFacts,
    build_dataset_card,
    find_checkpoint_hash,
    size_category,
    write_dataset_card,
)
from facesynth.data_cards.quality_metrics import QualitySettings, compute_quality
from facesynth.tests.shard_fixtures import add_manifest


def write_two_shards(folder, per_shard: int = 6, dim: int = 4) -> None:
    rng = np.random.default_rng(0)
    for shard in range(2):
        rows = [
            ShardRow(
                image=rng.integers(0, 255, size=(112, 112, 3), dtype=np.uint8),
                label=shard * 3 + i // 2,
                identity=f"id{shard * 3 + i // 2}",
                index=i % 2,
                seed=i,
                embedding=rng.normal(size=dim).astype(np.float32),
            )
            for i in range(per_shard)
        ]
        write_shard(folder / shard_name(shard, 2), rows_to_table(rows, dim))
    add_manifest(folder, embedding_dim=dim)


def facts(**overrides) -> DatasetCardFacts:
    base = dict(
        pretty_name="Tiny synthetic faces",
        num_examples=12,
        num_identities=6,
        features=features(4),
        num_bytes=1234,
        download_size=999,
        generator="parametric",
        generator_config={"difficulty": "medium", "renderer_version": 1},
        stage_config={"seed": 7, "identities": 6, "per_identity": 2},
        config_hash="abc123",
        seed=7,
        embedding_dim=4,
    )
    base.update(overrides)
    return DatasetCardFacts(**base)


def test_card_yaml_parses_with_hub_card_classes(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 2)
    quality = compute_quality(
        rng.normal(size=(12, 4)),
        labels,
        reference_centres=rng.normal(size=(3, 4)),
        settings=QualitySettings(impostor_pairs=100),
    )
    path = write_dataset_card(
        facts(quality=quality, figures={"sample grid": "figures/sample_grid.png"}), tmp_path
    )
    card = DatasetCard.load(path)
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0"
    assert data["size_categories"] == ["n<1K"]
    assert data["task_categories"] == ["image-classification", "image-feature-extraction"]
    assert {"face-recognition", "synthetic", "parametric"} <= set(data["tags"])
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    info = infos["default"]
    assert info.features == features(4)
    assert info.splits["train"].num_examples == 12
    assert info.download_size == 999
    body = card.text
    for needle in (
        "abc123",
        "difficulty: medium",
        "| global seed | 7 |",
        "C_intra",
        "![sample grid](figures/sample_grid.png)",
        "real identity\ncentres",
        "## Citation",
        "@misc{facesynth",
    ):
        assert needle in body, needle
    assert "Non-commercial" not in body


def test_datasets_honours_the_card_configs(tmp_path):
    write_two_shards(tmp_path)
    # a card whose config names only the first shard: datasets must load 6 rows, not 12
    write_dataset_card(facts(data_files="data/train-00000-of-00002.parquet", num_examples=6), tmp_path)
    ds = load_dataset(str(tmp_path), split="train")
    assert ds.num_rows == 6
    assert sorted(set(ds["label"])) == [0, 1, 2]
    assert type(ds.features["image"]).__name__ == "Image"
    write_dataset_card(facts(), tmp_path)
    assert load_dataset(str(tmp_path), split="train").num_rows == 12


def test_insightface_sources_make_the_card_non_commercial():
    card = build_dataset_card(facts(generator="id3", generator_config={"encoder": "insightface:antelopev2"}))
    assert card.data.to_dict()["license"] == "cc-by-nc-4.0"
    assert "Non-commercial research use only" in card.text
    assert "Xu, Jianqing" in card.text  # ID3 citation for ID3-made data
    explicit = build_dataset_card(
        facts(license="other", generator_config={"encoder": "insightface:buffalo_l"})
    )
    assert explicit.data.to_dict()["license"] == "other"
    assert "Non-commercial research use only" in explicit.text  # the licence note stays
    # the ArcFace *loss* is not an insightface model
    assert (
        build_dataset_card(facts(generator_config={"head": "arcface"})).data.to_dict()["license"]
        == "cc-by-4.0"
    )


def test_card_without_quality_report_says_so():
    card = build_dataset_card(facts())
    assert "No quality report was found" in card.text
    assert "No leakage check against real identities was run" in card.text


@pytest.mark.parametrize(
    ("rows", "category"),
    [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (500_000, "100K<n<1M"), (1_000_000, "1M<n<10M")],
)
def test_size_categories_come_from_the_allowed_list(rows, category):
    assert size_category(rows) == category


def test_checkpoint_hash_is_found_in_nested_generator_configs():
    config = {"anchors_sha256": "aaaa", "model": {"pipeline_fingerprint": "f00d", "lr": 1}}
    assert find_checkpoint_hash(config) == "f00d"  # the anchors digest is not a checkpoint hash
    assert find_checkpoint_hash({"difficulty": "easy"}) is None
    card = build_dataset_card(facts(generator="id3", generator_config=config))
    assert "| checkpoint hash | `f00d` |" in card.text


def test_licence_comes_from_the_model_metadata_never_from_its_path(tmp_path):
    from facesynth.data_cards.dataset_card import saved_license

    # an arcface_torch backbone.pth under a neutral path: nothing states its licence -> unknown
    weights = tmp_path / "models" / "backbone.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    config = {"encoder": f"torch:{weights}"}
    card = build_dataset_card(facts(generator="id3", generator_config=config))
    assert card.data.to_dict()["license"] == "unknown"
    assert "The licence is not known" in card.text and "--license ID" in card.text
    # stated by the user
    stated = build_dataset_card(facts(generator="id3", generator_config=config, encoder_license="mit"))
    assert stated.data.to_dict()["license"] == "mit"
    # stated by the model's own saved files
    (weights.parent / "config.json").write_text('{"license": "apache-2.0"}')
    assert saved_license(f"torch:{weights}") == "apache-2.0"
    saved = build_dataset_card(facts(generator="id3", generator_config=config))
    assert saved.data.to_dict()["license"] == "apache-2.0"
    assert "The licence is not known" not in saved.text


def test_publish_refuses_an_unknown_licence(tmp_path):
    from facesynth.pipelines.publish import validate_dataset_card

    write_dataset_card(
        facts(generator="id3", generator_config={"encoder": "torch:/nowhere/backbone.pth"}), tmp_path
    )
    problems = validate_dataset_card(tmp_path, None, [])
    assert any("licence unknown" in p and "--license" in p for p in problems), problems
    write_dataset_card(facts(license="apache-2.0"), tmp_path)
    assert not any("licen" in p for p in validate_dataset_card(tmp_path, None, []))


def test_card_refuses_a_bad_repo_id_before_writing(tmp_path, capsys):
    from facesynth.pipelines.cli import main

    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    write_two_shards(folder / "data")
    assert main(["card", str(folder), "--kind", "dataset", "--repo-id", "not a repo id!!"]) == 2
    assert "--repo-id 'not a repo id!!' is not a valid Hub repo id" in capsys.readouterr().err
    assert not (folder / "README.md").exists()


def test_flag_value_alias_bomb_is_an_argparse_error():
    """A YAML-typed flag value is measured with its aliases expanded and refused as a usage error."""
    import argparse

    from facesynth.core.cli_args import _yaml_value

    value = "[&a [x,x,x,x,x,x,x,x,x,x]"
    for name, prev in zip("bcdefgh", "abcdefg", strict=True):
        value += f", &{name} [" + ",".join([f"*{prev}"] * 10) + "]"
    value += "]"
    with pytest.raises(argparse.ArgumentTypeError, match="YAML expands to more than"):
        _yaml_value(value)
    assert _yaml_value("[1, 2]") == [1, 2]
