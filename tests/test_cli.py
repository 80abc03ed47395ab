"""The command line: every subcommand has a --help with an example, and the console script exists."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from facesynth.pipelines.cli import COMMANDS, main


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
