"""The command line: help with examples, the console script, and flags generated from the stage configs."""

from __future__ import annotations

import importlib
import logging
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from facesynth.core.cli_args import _strip_optional, config_from_args, field_default, to_argv
from facesynth.core.errors import ConfigError
from facesynth.pipelines.cli import COMMANDS, build_parser, main
from facesynth.recognizers.trainer import RecognizerTrainConfig


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"facesynth {command}" in text and "--config FILE" in text
    assert "example" in text


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "generate" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = shutil.which("facesynth") or shutil.which(
        "facesynth", path=str(__import__("pathlib").Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("the facesynth console script is not on PATH (package not installed)")
    result = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("facesynth ")


# --- flags generated from the stage configs ------------------------------------------------------

CONFIG_COMMANDS = {
    # command: the settings its required fields need
    "generate": {"identities": 2, "per_identity": 3, "out": "ds"},
    "train-recognizer": {"data": ["d"], "output_dir": "run"},
    "train-generator": {"data": ["d"], "output_dir": "run"},
    "quality": {"dataset": "ds"},
    "ingest": {"source": "src", "out": "ds"},
    "attack": {"target": "rgb", "public": ["p"], "output_dir": "out"},
    "bench": {"model": "torch:run", "out": "bench"},
    "card": {"folder": "ds"},
    "pairs": {"dataset": "ds", "out": "pairs.bin"},
    "publish": {"folder": "ds", "repo_id": "me/ds"},
    "verify": {"dataset": "ds"},
}


def _spec(command):
    module = importlib.import_module(f"facesynth.pipelines.commands.{COMMANDS[command]}")
    return module.cli_spec()


def _parse(command, argv):
    parser = build_parser(command)
    return parser.parse_args([command, *argv])


def _candidates(annotation, default):
    annotation = _strip_optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return [not default]
    if origin is typing.Literal:
        return [c for c in typing.get_args(annotation) if c != default]
    if annotation is int:
        return [(default or 0) + 3, 7, 32]
    if annotation is float:
        return [0.25, 0.75, 2.5]
    if annotation in (str, Path):
        return ["global", "some/where", "7x"]
    if origin in (list, tuple):
        item = typing.get_args(annotation)[0]
        return [[3, 5]] if item is int else [[0.5, 0.25]] if item is float else [["a", "b"]]
    if origin is dict or annotation is dict:
        return [{"k": 1, "name": "x"}]
    return []


def _nested(path, value):
    return {path[0]: value} if len(path) == 1 else {path[0]: {path[1]: value}}


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_every_config_field_is_a_flag_and_round_trips(command):
    spec = _spec(command)
    base = CONFIG_COMMANDS[command]
    options = spec.options()
    covered = {o.path[0] for o in options}
    assert covered == set(spec.config.model_fields), "a config field has no flag"
    for option in options:
        default = field_default(option.info)
        value = None
        for candidate in _candidates(option.annotation, None if default is PydanticUndefined else default):
            try:
                spec.config.model_validate(base | _nested(option.path, candidate))
            except ValidationError:
                continue
            value = candidate
            break
        assert value is not None, f"{command}: no valid test value for {option.dest}"
        settings = base | _nested(option.path, value)
        config = config_from_args(spec, _parse(command, to_argv(spec, settings)))
        got = config
        for key in option.path:
            got = getattr(got, key)
        expected = spec.config.model_validate(settings)
        for key in option.path:
            expected = getattr(expected, key)
        assert got == expected, f"{command} {option.display}: {got!r} != {expected!r}"


def test_defaults_come_from_the_config_and_show_in_help(capsys):
    args = _parse("train-recognizer", ["--data", "d", "--out", "run"])
    config = config_from_args(_spec("train-recognizer"), args)
    assert config == RecognizerTrainConfig(data=["d"], output_dir="run")
    with pytest.raises(SystemExit):
        main(["train-recognizer", "--help"])
    text = capsys.readouterr().out
    assert "--batch-size INT" in text and "(default: 128)" in text and "--no-flip" in text


def test_old_spellings_still_work_and_are_hidden(capsys, caplog):
    argv = ["--data", "d", "--output-dir", "run", "--privacy", "dctdp", "--no-onnx", "--benchmark", "a.bin"]
    with caplog.at_level(logging.WARNING):
        config = config_from_args(_spec("train-recognizer"), _parse("train-recognizer", argv))
    assert (config.output_dir, config.method, config.export_onnx, config.benchmarks) == (
        "run",
        "dctdp",
        False,
        ["a.bin"],
    )
    assert "--output-dir is deprecated; use --out" in caplog.text
    with pytest.raises(SystemExit):
        main(["train-recognizer", "--help"])
    assert "--output-dir" not in capsys.readouterr().out
    gen = config_from_args(
        _spec("train-generator"),
        _parse("train-generator", ["--data", "d", "--output", "o", "--lambda-id", "0"]),
    )
    assert gen.output_dir == "o" and gen.loss.lambda_id == 0


def test_config_file_uses_the_field_names_and_flags_win(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("dataset: ds\nbatch_size: 8\nmetrics:\n  flip_threshold: 0.5\n  seed: 3\n")
    config = config_from_args(_spec("quality"), _parse("quality", ["--config", str(path), "--seed", "4"]))
    assert (config.batch_size, config.metrics.flip_threshold, config.metrics.seed) == (8, 0.5, 4)
    path.write_text("dataset: ds\nbatch_sise: 8\n")
    with pytest.raises(ConfigError, match="unknown setting 'batch_sise' .*did you mean 'batch_size'"):
        config_from_args(_spec("quality"), _parse("quality", ["--config", str(path)]))


def test_errors_name_the_flag_once(tmp_path, capsys):
    code = main(["generate", "--identities", "2", "--per-identity", "0", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--per-identity: bad value 0" in err and "per_identity" not in err
    assert err.count("facesynth generate") == 1
    assert not (tmp_path / "x").exists()
    assert main(["generate", "--per-identity", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--identities: required" in capsys.readouterr().err


def test_output_flag_is_out_and_device_defaults_to_auto_everywhere():
    for command in CONFIG_COMMANDS:
        options = {o.dest: o for o in _spec(command).options()}
        out = [o for o in options.values() if o.path[0] in ("out", "output_dir")]
        if out:
            assert out[0].option_strings == ("--out",), command
        if "device" in options:
            assert field_default(options["device"].info) in ("auto", None), command


def test_attack_without_encoder_says_what_is_missing_and_how_to_get_it(monkeypatch, capsys, tmp_path):
    import facesynth.pipelines.attack as attack_stage

    seen = {}
    monkeypatch.setattr(attack_stage, "run_attack_stage", lambda config: seen.setdefault("config", config))
    monkeypatch.setattr(
        attack_stage, "markdown_report", lambda results: "| attacker | leakage |\n| ridge | n/a |"
    )
    argv = ["attack", "--target", "runs/pf", "--public", "p", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "need an independent identity encoder" in out and "--encoder torch:" in out
    assert "--target rgb" in out
    assert seen["config"].device == "auto" and seen["config"].encoder is None
    assert main([*argv, "--encoder", "torch:runs/rec"]) == 0
    assert "independent identity encoder" not in capsys.readouterr().out


def test_thread_count_is_a_share_of_the_cores_unless_the_user_set_it():
    from facesynth.pipelines.runtime import intra_op_threads

    assert intra_op_threads({}, cores=8) == 8
    assert intra_op_threads({"LOCAL_WORLD_SIZE": "4"}, cores=8) == 2
    assert intra_op_threads({"LOCAL_WORLD_SIZE": "16"}, cores=8) == 1
    assert intra_op_threads({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "4"}, cores=8) is None


def test_third_party_noise_is_quiet_unless_verbose(caplog):
    from facesynth.pipelines.runtime import configure_logging

    configure_logging(verbose=False)
    with caplog.at_level(logging.DEBUG, logger="diffusers.models.modeling_utils"):
        logging.getLogger("diffusers.models.modeling_utils").warning(
            "There are modules in UNet that should be kept in float32: []. Casting ..."
        )
        logging.getLogger("diffusers.models.modeling_utils").warning("kept in float32: ['norm']")
    assert "float32: []" not in caplog.text and "['norm']" in caplog.text
    assert logging.getLogger("accelerate").getEffectiveLevel() == logging.WARNING
    assert not logging.getLogger("torch.onnx._internal.exporter._registration").isEnabledFor(logging.WARNING)


def test_card_flags_repeat_keep_old_spellings_and_refuse_other_kinds_options(caplog):
    from facesynth.pipelines.cards import CardOptions, card_options, write_card

    argv = ["ds", "--tag", "a", "--tag", "b", "--source-dataset", "x", "--recipe", "r.yaml"]
    with caplog.at_level(logging.WARNING):
        config = config_from_args(_spec("card"), _parse("card", [*argv, "--training-data", "t1", "t2"]))
    assert (config.tags, config.source_datasets, config.recipe_file) == (["a", "b"], ["x"], Path("r.yaml"))
    assert config.training_data == ["t1", "t2"] and config.folder == Path("ds")
    assert "--tag is deprecated; use --tags" in caplog.text
    with pytest.raises(ConfigError, match="--model-name, --recipe-file: not used by a dataset card"):
        card_options("dataset", CardOptions(model_name="m", recipe_file="r.yaml", tags=["a"]))
    assert card_options("model", CardOptions(model_name="m"))["model_name"] == "m"
    with pytest.raises(ConfigError, match="'licence': unknown field"):
        write_card("anywhere", "dataset", licence="mit")  # checked before the folder is read


def test_publish_and_verify_take_generated_flags():
    config = config_from_args(
        _spec("publish"), _parse("publish", ["ds", "--repo-id", "me/ds", "--private", "--dry-run"])
    )
    assert (config.folder, config.repo_id, config.private, config.dry_run) == (
        Path("ds"),
        "me/ds",
        True,
        True,
    )
    with pytest.raises(ConfigError, match="--repo-id: required"):
        config_from_args(_spec("publish"), _parse("publish", ["ds"]))
    with pytest.raises(ConfigError, match="--image-stride: bad value 0"):
        config_from_args(_spec("verify"), _parse("verify", ["ds", "--image-stride", "0"]))
