"""`facesynth run`: a graph of stages from one config, validated whole, resumable, rerunning only what changed."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError
from facesynth.pipelines.cli import main
from facesynth.pipelines.run import builtin_config, load_run_config, plan, recipe_names, run_pipeline
from facesynth.pipelines.run_graph import InputSlot, StageKind, StageSpec, execute, plan_run

# ---------------------------------------------------------------------------------------------
# the runner's logic on instant stages


class MakeConfig(StageConfig):
    value: int = 0
    sources: list[str] = Field(default_factory=list)
    out: str


def _make(config: MakeConfig, ctx) -> dict:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "+".join(Path(s).read_text() for s in config.sources) + f"+{config.value}"
    (out / "data.txt").write_text(text)
    return {"text": text}


KINDS = {
    "make": StageKind(
        "make",
        "thing",
        lambda: MakeConfig,
        {"sources": InputSlot("sources", ("thing",), many=True)},
        _make,
        output_field="out",
        output_of=lambda config, stage_dir: stage_dir / "data.txt",
    )
}


def _graph(**values: int) -> dict[str, StageSpec]:
    """a -> b -> d, c -> d, e on its own."""
    specs = {
        "a": {"kind": "make", "settings": {"value": values.get("a", 1)}},
        "d": {"kind": "make", "inputs": {"sources": ["b", "c"]}},
        "b": {"kind": "make", "inputs": {"sources": "a"}, "settings": {"value": values.get("b", 2)}},
        "c": {"kind": "make", "settings": {"value": values.get("c", 3)}},
        "e": {"kind": "make", "settings": {"value": 5}},
    }
    return {name: StageSpec.model_validate(spec) for name, spec in specs.items()}


def _run(tmp_path, stages) -> tuple[list[str], dict]:
    lines: list[str] = []
    records = execute(plan_run(tmp_path, stages, KINDS), tmp_path, lines.append, show_progress=False)
    ran = [line.split()[1] for line in lines if line.split()[3] == "running"]
    return ran, records


def test_graph_order_rerun_and_downstream_only(tmp_path):
    ran, records = _run(tmp_path, _graph())
    assert ran == ["a", "b", "c", "d", "e"]  # inputs first, file order otherwise
    assert (tmp_path / "d" / "data.txt").read_text() == "+1+2++3+0"
    assert _run(tmp_path, _graph())[0] == []  # nothing redone
    assert _run(tmp_path, _graph(b=7))[0] == ["b", "d"]  # exactly b and what is downstream of it
    assert (tmp_path / "d" / "data.txt").read_text() == "+1+7++3+0"
    assert _run(tmp_path, _graph(a=4, b=7))[0] == ["a", "b", "d"]
    (tmp_path / "c" / "data.txt").unlink()  # an output that vanished is remade, its consumers are not
    assert _run(tmp_path, _graph(a=4, b=7))[0] == ["c"]


def test_interrupted_stage_resumes_and_changed_stage_starts_clean(tmp_path):
    _run(tmp_path, _graph())
    ledger = json.loads((tmp_path / "stages.json").read_text())
    ledger["b"]["status"] = "running"  # as if killed mid-stage
    (tmp_path / "stages.json").write_text(json.dumps(ledger))
    (tmp_path / "b" / "partial").write_text("kept")
    lines: list[str] = []
    execute(plan_run(tmp_path, _graph(), KINDS), tmp_path, lines.append, show_progress=False)
    assert any(" b " in line and "resuming" in line for line in lines)
    assert (tmp_path / "b" / "partial").is_file()  # a resumed stage keeps its partial work
    _run(tmp_path, _graph(b=9))
    assert not (tmp_path / "b" / "partial").exists()  # other settings: the folder is made afresh


def test_hashes_do_not_depend_on_the_run_folder(tmp_path):
    digests = [
        [s.digest for s in plan(load_run_config("demo", {"run_dir": tmp_path / name}))] for name in ("a", "b")
    ]
    assert digests[0] == digests[1]
    config = load_run_config("demo", {"run_dir": tmp_path})
    assert "pipeline" not in config.stages["id3_faces"].settings["options"]  # inputs do not leak into it
    plan(config)
    assert "pipeline" not in config.stages["id3_faces"].settings["options"]


def test_progress_lines_have_elapsed_and_eta(tmp_path):
    lines: list[str] = []
    execute(plan_run(tmp_path, _graph(), KINDS), tmp_path, lines.append, show_progress=False)
    assert len(lines) == 10 and all("elapsed" in line and "ETA" in line for line in lines)
    assert lines[-1].startswith("[5/5] e") and lines[-1].endswith("ETA 0:00")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "mkae"}, "stage 'd' field 'kind': unknown stage kind 'mkae'"),
        ({"inputs": {"sources": ["b", "x"]}}, "stage 'd' field 'inputs.sources': no stage named 'x'"),
        ({"inputs": {"sorces": ["b"]}}, "stage 'd' field 'inputs.sorces': make has no such input"),
        (
            {"settings": {"valeu": 1}},
            r"stage 'd' \(make\) settings: invalid settings\n.*field 'valeu': unknown",
        ),
        ({"settings": {"out": "x"}}, "stage 'd' field 'settings.out': set by the runner"),
    ],
)
def test_bad_graph_is_refused_naming_stage_and_field(tmp_path, change, message):
    stages = _graph()
    stages["d"] = stages["d"].model_copy(update=change)
    with pytest.raises(ConfigError, match=message):
        plan_run(tmp_path, stages, KINDS)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


def test_cycle_is_refused_naming_stage_and_field(tmp_path):
    stages = _graph()
    stages["a"] = stages["a"].model_copy(update={"inputs": {"sources": ["d"]}})
    with pytest.raises(ConfigError, match=r"field 'inputs.sources': the stages form a cycle \(.*a.*d.*\)"):
        plan_run(tmp_path, stages, KINDS)


# ---------------------------------------------------------------------------------------------
# the real stage kinds and the shipped recipes


def test_printed_demo_recipe_reuses_the_demo_and_a_change_reruns_only_downstream(tmp_path, capsys):
    """The README's `run --print-recipe demo > my_run.yaml` then `run my_run.yaml --run-dir runs/demo --set
    stages.id3.settings.max_steps=1500`: the printed file plans the demo's own hashes, and the change
    touches id3 and exactly the stages downstream of it."""
    assert main(["run", "--print-recipe", "demo"]) == 0
    my_run = tmp_path / "my_run.yaml"
    my_run.write_text(capsys.readouterr().out)
    demo = {s.name: s.digest for s in plan(load_run_config(None, {"run_dir": tmp_path / "demo"}))}
    printed = {s.name: s.digest for s in plan(load_run_config(my_run, {"run_dir": tmp_path / "demo"}))}
    assert printed == demo
    changed_config = load_run_config(
        my_run, {"run_dir": tmp_path / "demo"}, settings=["stages.id3.settings.max_steps=1500"]
    )
    changed = {s.name: s for s in plan(changed_config)}
    rerun = {name for name, stage in changed.items() if stage.digest != demo[name]}
    downstream = {"id3"}
    for name, stage in changed.items():  # plan order is dependency order
        if downstream & set(stage.upstream):
            downstream.add(name)
    assert rerun == downstream
    assert {"real_faces", "face_encoder", "real_shards", "unseen_faces", "unseen_pairs"}.isdisjoint(rerun)


@pytest.mark.parametrize("name", ["demo", "orl", "privacy-comparison", "paper-scale"])
def test_recipes_ship_and_validate(tmp_path, name):
    assert name in recipe_names()
    config = load_run_config(name, {"run_dir": tmp_path})
    stages = plan(config)
    assert len(stages) == len(config.stages) >= 5
    assert not any(tmp_path.iterdir())


def test_demo_recipe_is_the_mission_chain(tmp_path):
    kinds = [stage.spec.kind for stage in plan(load_run_config(None, {"run_dir": tmp_path}))]
    for kind in ("ingest", "train_generator", "generate", "train_recognizer", "bench", "attack", "quality"):
        assert kind in kinds
    methods = [
        s["settings"].get("method", "plain")
        for s in builtin_config("demo")["stages"].values()
        if s["kind"] == "train_recognizer"
    ]
    assert "dctdp" in methods


def test_paper_scale_states_its_gpu_time():
    description = builtin_config("paper-scale")["description"]
    assert "1 GPU" in description and "8 GPUs" in description and "h" in description


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "stages.bench.settings.batch_sise=8",
            r"stage 'bench' \(bench\) settings.*\n.*'batch_sise': unknown field",
        ),
        ("stages.dataset_card.settings.licence=mit", r"stage 'dataset_card'.*\n.*'licence': unknown field"),
        ("stages.id3.settings.max_steps=0", r"stage 'id3' \(train_generator\).*\n.*'max_steps': bad value 0"),
        (
            "stages.quality.inputs.dataset=recognizer",
            "stage 'quality' field 'inputs.dataset': stage 'recognizer'",
        ),
        ("stages.bench.kind=benchmark", "stage 'bench' field 'kind': unknown stage kind 'benchmark'"),
    ],
)
def test_typo_in_any_section_is_refused_before_anything_runs(tmp_path, capsys, setting, message):
    with pytest.raises(ConfigError, match=message):
        plan(load_run_config("demo", {"run_dir": tmp_path}, settings=[setting]))
    assert main(["run", "demo", "--run-dir", str(tmp_path / "run"), "--set", setting]) == 2
    assert "error: run config: invalid stages" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_older_run_files_are_converted(tmp_path):
    old = {
        "run_dir": str(tmp_path),
        "train_data": {"generator": "parametric", "identities": 12, "per_identity": 4},
        "eval_data": {"generator": "parametric", "identities": 6, "per_identity": 3, "seed": 1},
        "pairs": {"num_pairs": 30},
        "train_recognizer": {"backbone": "tiny", "max_steps": 4},
        "quality": {"encoder": "trained"},
        "card": {"license": "apache-2.0"},
    }
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    stages = {s.name: s for s in plan(load_run_config(path))}
    assert stages["quality"].config.encoder == f"torch:{tmp_path / 'recognizer'}"
    assert stages["recognizer"].config.benchmarks == [str(tmp_path / "pairs" / "pairs.bin")]
    path.write_text(yaml.safe_dump(old | {"card": {"licence": "x"}}))
    with pytest.raises(ConfigError, match="stage 'card'.*\n.*'licence': unknown field"):
        plan(load_run_config(path))


@pytest.mark.slow
def test_demo_graph_at_smoke_size_then_rerun_then_one_change(tmp_path, capsys):
    """The whole chain (ingest, ID3, ID3 dataset, plain + DCTDP, bench, attack, quality, cards, publish)."""
    run_dir = tmp_path / "run"
    lines: list[str] = []
    config = load_run_config("demo", {"run_dir": run_dir}, profile="smoke")
    records = run_pipeline(config, show_progress=False, echo=lines.append)
    assert all(r["status"] == "done" for r in records.values()) and len(records) == len(config.stages)
    assert (run_dir / "id3" / "pipeline" / "model_index.json").is_file()
    assert json.loads((run_dir / "recognizer_dctdp" / "method_config.json").read_text())["method"] == "dctdp"
    table = json.loads((run_dir / "bench" / "table.json").read_text())
    assert table["models"]["recognizer_dctdp"]["method"] == "dctdp"
    assert set(table["models"]) == {"face_encoder", "recognizer", "recognizer_dctdp"}
    attack = json.loads((run_dir / "attack" / "attack.json").read_text())
    assert attack["target"]["method"] == "dctdp" and attack["num_victim_identities"] >= 2
    assert "name: unseen_pairs accuracy" in (run_dir / "recognizer" / "README.md").read_text()
    assert json.loads((run_dir / "publish" / "publish.json").read_text())["uploaded"] is False
    report = (run_dir / "report.md").read_text()
    for part in (
        "## Verification: bench",
        "bench/roc.png",
        "## Attack: attack",
        "report_figures/id3_faces.png",
    ):
        assert part in report
    assert "<table>" in (run_dir / "report.html").read_text()
    log = (run_dir / "run.log").read_text()
    assert "[15/15] publish" in log and "Verification: bench" in log

    lines.clear()
    terminal_log = io.StringIO()  # what a root logging handler (the CLI's, on stderr) would show
    root_handler = logging.StreamHandler(terminal_log)
    logging.getLogger().addHandler(root_handler)
    try:
        run_pipeline(config, show_progress=False, echo=lines.append)
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert sum("done earlier, skipped" in line for line in lines) == 15
    # each progress line reaches the terminal once: echoed, not also through the root logger
    assert "done earlier, skipped" not in terminal_log.getvalue()
    # run.log holds each line once: run 1 "running" and "done", the rerun "skipped"
    assert (run_dir / "run.log").read_text().count("[15/15] publish") == 3

    lines.clear()
    changed = load_run_config(
        "demo", {"run_dir": run_dir}, settings=["stages.unseen_pairs.settings.num_pairs=24"], profile="smoke"
    )
    run_pipeline(changed, show_progress=False, echo=lines.append, report=False)
    ran = [line.split()[1] for line in lines if "running" in line]
    assert ran == ["unseen_pairs", "recognizer", "bench", "model_card"]


@pytest.mark.slow
def test_training_and_generation_stages_run_under_a_two_process_launcher(tmp_path):
    """processes: 2 -> generate and train_recognizer run under torchrun (gloo on CPU); the rest in-process."""
    data = {
        "run_dir": str(tmp_path / "run"),
        "processes": 2,
        "stages": {
            "faces": {"kind": "generate", "settings": {"identities": 4, "per_identity": 4, "shard_size": 8}},
            "pairs": {"kind": "pairs", "inputs": {"dataset": "faces"}, "settings": {"num_pairs": 10}},
            "model": {
                "kind": "train_recognizer",
                "inputs": {"data": ["faces"]},
                "settings": {
                    "backbone": "tiny",
                    "input_size": 16,
                    "batch_size": 4,
                    "max_steps": 2,
                    "num_workers": 0,
                    "checkpoint_every": 0,
                    "export_onnx": False,
                },
            },
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    records = run_pipeline(load_run_config(path), show_progress=False, echo=lambda line: None, report=False)
    assert records["faces"]["images"] == 16 and records["model"]["steps"] == 2
    assert (tmp_path / "run" / "model" / "backbone.safetensors").is_file()
    assert not (tmp_path / "run" / "faces" / "faces.config.json").exists()  # launch files stay outside


def test_subset_keeps_a_label_range_relabelled(tmp_path):
    from facesynth.core.manifest import Manifest
    from facesynth.core.shard_reader import read_columns
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset
    from facesynth.pipelines.subset import SubsetConfig, write_subset

    source = tmp_path / "all"
    generate_dataset(
        GenerateConfig(identities=5, per_identity=2, out=source, shard_size=4), show_progress=False
    )
    manifest = write_subset(SubsetConfig(dataset=source, out=tmp_path / "held_out", label_start=3))
    table = read_columns(tmp_path / "held_out", ["label", "identity"])
    assert table["label"].to_pylist() == [0, 0, 1, 1]
    assert table["identity"].to_pylist() == read_columns(source, ["identity"])["identity"].to_pylist()[6:]
    assert manifest.num_identities == 2 and Manifest.read(tmp_path / "held_out").num_rows == 4
    with pytest.raises(ConfigError, match="label_stop 2 must be above label_start 3"):
        SubsetConfig.from_mapping(
            {"dataset": source, "out": tmp_path / "x", "label_start": 3, "label_stop": 2}
        )


@pytest.mark.slow
def test_orl_recipe_ingests_and_splits_the_real_faces(orl_root, tmp_path):
    config = load_run_config(
        "orl",
        {"run_dir": tmp_path, "skip": ["recognizer", "bench", "model_card"]},
        settings=[f"stages.orl.settings.source={orl_root}"],
    )
    records = run_pipeline(config, show_progress=False, echo=lambda line: None, report=False)
    assert records["orl"]["identities"] == 40 and records["orl"]["images"] == 400
    assert records["orl_train"]["identities"] == 30 and records["orl_held_out"]["identities"] == 10
    assert records["held_out_pairs"]["pairs"] == 900


def test_small_input_recognizer_embeds_aligned_112_faces_resized_as_in_training():
    """A recognizer trained at 32x32 (the demo's) is benchmarked and used by ingest on 112x112 crops."""
    import torch

    from facesynth.recognizers.backbones import build_backbone
    from facesynth.recognizers.encoders import TorchEncoder

    encoder = TorchEncoder(build_backbone("tiny", input_size=(32, 32)))
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    small = torch.nn.functional.interpolate(faces, size=(32, 32), mode="bilinear", antialias=True)
    assert torch.allclose(encoder.embed(faces), encoder.embed(small), atol=1e-6)
    with pytest.raises(Exception, match="expects aligned 32x32"):
        encoder.embed(torch.zeros(1, 3, 16, 16))  # smaller than the input is refused, never upsampled
