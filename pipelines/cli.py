"""The ``facesynth`` command line: a thin layer over the stage functions.

Each subcommand is one module in :mod:`facesynth.pipelines.commands` exposing ``HELP`` (one line),
``DESCRIPTION`` (optional, longer), ``add_arguments(parser)`` and ``run(args) -> int``. Commands
whose flags are generated from their stage config (:mod:`facesynth.core.cli_args`) read ``--config
FILE`` themselves, spelled like the config's fields; for the others the file's keys (option names with
``_``) become the defaults. Explicit flags win either way. Only the chosen command's options are
built, so ``facesynth --help`` and a command's start do not import every stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from facesynth import __version__
from facesynth.core.config import load_config_file
from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.pipelines.runtime import configure_logging, configure_threads

# name -> module under facesynth.pipelines.commands; order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "generate": "generate",
    "verify": "verify",
    "train-recognizer": "train_recognizer",
    "train-generator": "train_generator",
    "ingest": "ingest",
    "bench": "bench",
    "attack": "attack",
    "quality": "quality",
    "card": "card",
    "publish": "publish",
    "pairs": "pairs",
    "run": "run",
    "demo": "demo",
}


def _load_command(module_name: str):
    return importlib.import_module(f"facesynth.pipelines.commands.{module_name}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` given only that subcommand's options are built (None: all of them)."""
    parser = argparse.ArgumentParser(
        prog="facesynth",
        description="Synthetic face-recognition datasets: generate, train, benchmark, publish.",
    )
    parser.add_argument("--version", action="version", version=f"facesynth {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = _load_command(module_name)
        sub = subparsers.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="YAML/TOML/JSON file whose keys set this command's defaults (flags given here win)",
        )
        if command is None or command == name:
            module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _parser=sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _apply_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Make a subcommand's ``--config FILE`` values its defaults (before parsing, so required flags may come from it)."""
    command = next((a for a in argv if a in COMMANDS), None)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if command is None or not known.config:
        return
    sub = _subparser(parser, command)
    if sub.get_default("_cli_spec") is not None:
        return  # a config-driven command validates its --config file against its stage config
    data = {k.replace("-", "_"): v for k, v in load_config_file(known.config).items()}
    actions = {action.dest: action for action in sub._actions}
    unknown = sorted(k for k in data if k not in actions or k in ("help", "config"))
    if unknown:
        raise ConfigError(f"{known.config}: unknown settings {unknown} for 'facesynth {command}'")
    for key in data:
        actions[key].required = False
    sub.set_defaults(**data)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(next((a for a in argv if a in COMMANDS), ""))
    try:
        _apply_config_file(parser, argv)
    except FacesynthError as exc:
        print(f"facesynth: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.verbose)
    configure_threads()
    try:
        return int(args._run(args) or 0)
    except FacesynthError as exc:
        print(f"facesynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facesynth {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
