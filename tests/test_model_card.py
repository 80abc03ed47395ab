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


def _bench_report(folder):
    """What `facesynth bench --out RUN/bench` writes (bench.json), ROC arrays and run facts included."""
    import json

    row = {
        "name": "eval_pairs",
        "source": "runs/param_eval.bin",
        "accuracy": 0.875,
        "accuracy_std": 0.02,
        "num_pairs": 600,
        "tar_at_far": {
            "0.001": {"tar": 0.5, "resolvable": True},
            "0.0001": {"tar": 0.25, "resolvable": False},
        },
        "auc": 0.9375,
        "fold_accuracies": [0.8, 0.9],
        "flip": True,
        "seconds": 1.5,
    }
    folder.mkdir(parents=True)
    report = {
        "model": "torch:runs/rec",
        "flip": True,
        "benchmarks": [row],
        "average": dict(row, name="average"),
    }
    (folder / "bench.json").write_text(json.dumps(report))


def test_card_of_a_model_folder_finds_bench_results_in_a_subfolder_and_renders_a_clean_table(tmp_path):
    from facesynth.pipelines.cards import write_card

    model = tmp_path / "rec"
    model.mkdir()
    (model / "backbone.safetensors").write_bytes(b"")
    _bench_report(model / "bench")
    card = ModelCard.load(write_card(model, "model", license="apache-2.0"))
    assert "No benchmark results" not in card.text
    table = [line for line in card.text.splitlines() if line.startswith("| ")]
    assert (
        table[0]
        == "| benchmark | accuracy | accuracy_std | num_pairs | TAR@FAR=0.001 | TAR@FAR=0.0001 | auc |"
    )
    assert table[1] == "| eval_pairs | 0.8750 | 0.0200 | 600 | 0.5000 | 0.2500 | 0.9375 |"
    assert "average" not in card.text.split("## Benchmarks")[1].split("## Files")[0]
    body = card.text.split("## Benchmarks")[1]
    assert "[" not in body.split("## Files")[0] and "{" not in body.split("## Files")[0]
    results = {(r.dataset_name, r.metric_type) for r in card.data.eval_results}
    assert ("eval_pairs", "accuracy") in results and ("eval_pairs", "num_pairs") not in results
