"""Model cards: YAML parses with huggingface_hub's ModelCard, benchmarks become eval results and a table."""

from __future__ import annotations

from huggingface_hub import ModelCard

from facesynth.data_cards.model_card import (
    ModelCardFacts,
    benchmark_table,
    build_model_card,
    write_model_card,
)


def facts(**overrides) -> ModelCardFacts:
    base = dict(
        model_name="ir50-facesynth",
        architecture="r50",
        embedding_dim=512,
        training_data=["me/facesynth-param100"],
        recipe={"head": "arcface", "epochs": 20, "lr": 0.1},
        benchmarks={"lfw": {"accuracy": 0.9912, "accuracy_std": 0.004}, "cfp_fp": {"accuracy": 0.87}},
        weights_file="backbone.safetensors",
    )
    base.update(overrides)
    return ModelCardFacts(**base)


def test_model_card_parses_and_carries_benchmarks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "local").mkdir(parents=True)  # looks like a repo id, but is a local folder
    card = ModelCard.load(
        write_model_card(facts(training_data=["me/facesynth-param100", "runs/local"]), tmp_path)
    )
    data = card.data
    assert data.license == "apache-2.0"  # the ArcFace loss alone does not make it non-commercial
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.datasets == ["me/facesynth-param100"]  # only Hub ids go into the YAML
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("lfw", "accuracy"): 0.9912, ("cfp_fp", "accuracy"): 0.87}
    assert "| lfw | 0.9912 | 0.0040 |" in card.text
    assert "| cfp_fp | 0.8700 | - |" in card.text
    assert "epochs: 20" in card.text and "- `runs/local`" in card.text


def test_insightface_derived_model_is_non_commercial():
    card = build_model_card(facts(base_model="insightface/arcface_torch-r50", benchmarks={}))
    assert card.data.license == "cc-by-nc-4.0"
    assert "Non-commercial research use only" in card.text
    assert "No benchmark results were recorded" in card.text


def test_benchmark_table_columns_are_the_union_of_metrics():
    columns, rows = benchmark_table({"a": {"acc": 0.5}, "b": {"tar@far1e-4": 0.25, "acc": 1.0}})
    assert columns == ["acc", "tar@far1e-4"]
    assert rows == [["a", "0.5000", "-"], ["b", "1.0000", "0.2500"]]
