"""`facesynth run`: every stage from one config, resumable, skipping finished stages."""

from __future__ import annotations

import json

import pytest
import yaml

from facesynth.core.errors import ConfigError
from facesynth.pipelines.cli import main
from facesynth.pipelines.run import builtin_config, load_run_config, run_pipeline

TINY = {
    "train_data": {"generator": "parametric", "identities": 12, "per_identity": 4, "seed": 0},
    "eval_data": {"generator": "parametric", "identities": 6, "per_identity": 3, "seed": 1},
    "pairs": {"num_pairs": 30},
    "train_recognizer": {
        "backbone": "tiny",
        "batch_size": 16,
        "max_steps": 4,
        "num_workers": 0,
        "checkpoint_every": 2,
        "log_every": 1,
        "tensorboard": False,
    },
    "quality": {"encoder": "trained", "grid_identities": 2, "grid_images": 2},
    "card": {"license": "apache-2.0"},
}


def test_builtin_demo_config_validates(tmp_path):
    config = load_run_config(None, {"run_dir": tmp_path})
    assert config.train_data.generator == "parametric"
    assert builtin_config()["train_recognizer"]["backbone"] == "tiny"


def test_bad_run_config_names_the_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(TINY | {"run_dir": str(tmp_path), "train_data": {"identities": 0, "per_identity": 2}})
    )
    with pytest.raises(ConfigError, match="field 'train_data.identities': bad value 0"):
        load_run_config(path)


@pytest.mark.slow
def test_run_all_stages_then_resume_skips_them(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    run_dir = tmp_path / "run"
    path.write_text(yaml.safe_dump(TINY | {"run_dir": str(run_dir)}))
    assert main(["run", str(path), "--no-progress"]) == 0
    ledger = json.loads((run_dir / "stages.json").read_text())
    assert list(ledger) == [
        "generate_train",
        "generate_eval",
        "pairs",
        "train_recognizer",
        "bench",
        "quality",
        "card",
    ]
    assert 0.0 <= ledger["bench"]["accuracy"] <= 1.0
    assert (run_dir / "train_data" / "README.md").is_file()
    assert (run_dir / "recognizer" / "backbone.safetensors").is_file()
    before = {k: v["hash"] for k, v in ledger.items()}
    capsys.readouterr()
    # a rerun with the same settings does nothing; a changed bench setting reruns bench and what follows
    assert main(["run", str(path), "--no-progress"]) == 0
    changed = TINY | {"run_dir": str(run_dir), "bench": {"batch_size": 8}}
    path.write_text(yaml.safe_dump(changed))
    mtime = (run_dir / "recognizer" / "backbone.safetensors").stat().st_mtime
    run_pipeline(load_run_config(path), show_progress=False)
    after = json.loads((run_dir / "stages.json").read_text())
    assert after["train_recognizer"]["hash"] == before["train_recognizer"]
    assert after["bench"]["hash"] != before["bench"] and after["card"]["hash"] != before["card"]
    assert (run_dir / "recognizer" / "backbone.safetensors").stat().st_mtime == mtime
