"""The ``facesynth`` command line: a thin layer over the stage functions.

Each subcommand is one module in :mod:`facesynth.pipelines.commands` exposing ``HELP`` (one line),
``DESCRIPTION`` (optional, longer), ``add_arguments(parser)`` and ``run(args) -> int``. Every
subcommand also takes ``--config FILE``: the file's keys (YAML/TOML/JSON, option names with ``_``)
become the defaults, and explicit flags win.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from facesynth import __version__
from facesynth.pipelines.config import load_config_file
from facesynth.pipelines.errors import ConfigError, FacesynthError

# name -> module under facesynth.pipelines.commands; order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "generate": "generate",
    "verify": "verify",
}


def _load_command(module_name: str):
    return importlib.import_module(f"facesynth.pipelines.commands.{module_name}")


def build_parser() -> argparse.ArgumentParser:
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
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run, _parser=sub)
    return parser


def _apply_config_file(args: argparse.Namespace, argv: Sequence[str]) -> argparse.Namespace:
    """Re-parse with the config file's values as defaults, refusing keys the command does not know."""
    sub: argparse.ArgumentParser = args._parser
    data = load_config_file(args.config)
    known = {action.dest for action in sub._actions}
    unknown = sorted(k for k in data if k.replace("-", "_") not in known)
    if unknown:
        raise ConfigError(f"{args.config}: unknown settings {unknown} for 'facesynth {args.command}'")
    sub.set_defaults(**{k.replace("-", "_"): v for k, v in data.items()})
    return build_parser_with(sub, args, argv)


def build_parser_with(sub: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]):
    # parse only the subcommand's own arguments again so that the new defaults apply
    index = list(argv).index(args.command)
    new_args = sub.parse_args(list(argv)[index + 1 :])
    new_args.command = args.command
    new_args.verbose = args.verbose
    return new_args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if getattr(args, "config", None):
            args = _apply_config_file(args, argv)
        return int(args._run(args) or 0)
    except FacesynthError as exc:
        print(f"facesynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facesynth {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
