"""``facesynth run CONFIG``: every stage from one config file."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the whole pipeline from one config file (resumable: finished stages are skipped)"
DESCRIPTION = """\
Runs generate (train + eval identities) -> pairs -> train-recognizer -> bench -> quality -> card
as configured in one YAML/TOML/JSON file. RUN_DIR/stages.json records each finished stage with a
hash of its settings and of everything upstream; rerunning skips what still matches and resumes the
rest. Print the built-in example with `facesynth run --print-demo-config`.

examples:
  facesynth run --print-demo-config > my_run.yaml
  facesynth run my_run.yaml
  facesynth run my_run.yaml --run-dir runs/other --skip card
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_config", type=Path, nargs="?", help="YAML/TOML/JSON run config")
    parser.add_argument("--run-dir", type=Path, default=None, help="override the config's run_dir")
    parser.add_argument("--skip", action="append", default=None, help="leave out a stage (repeatable)")
    parser.add_argument(
        "--print-demo-config", action="store_true", help="print the built-in demo config and exit"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_with_config(path: Path | None, args: argparse.Namespace) -> int:
    from facesynth.pipelines.run import load_run_config, run_pipeline

    overrides = {}
    if args.run_dir is not None:
        overrides["run_dir"] = args.run_dir
    if args.skip:
        overrides["skip"] = args.skip
    config = load_run_config(path, overrides)
    ledger = run_pipeline(config, show_progress=not args.no_progress)
    print(f"{config.run_dir}: finished stages:")
    for name, record in ledger.items():
        details = ", ".join(f"{k}={v}" for k, v in record.items() if k != "hash")
        print(f"  {name:17s} {details}")
    return 0


def run(args: argparse.Namespace) -> int:
    from facesynth.core.errors import ConfigError

    if args.print_demo_config:
        from importlib import resources

        print(resources.files("facesynth.pipelines").joinpath("configs", "demo.yaml").read_text(), end="")
        return 0
    if args.run_config is None:
        raise ConfigError("give a run config file (or --print-demo-config to see an example)")
    return run_with_config(args.run_config, args)
