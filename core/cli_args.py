"""Command-line flags generated from a stage's pydantic config.

Each field of the config becomes one flag (``per_identity`` -> ``--per-identity``), with its type, its
choices (``Literal``), ``--x/--no-x`` for booleans, several values for lists (the flag repeatable),
repeatable ``KEY=VALUE`` for dicts, and help text from ``Field(description=...)`` ending in the default, read from the model.
Fields of nested configs (``QualityConfig.metrics``) become flags of their own. Defaults live only in
the model: a flag that is not given is not passed on, so the config decides (as transformers'
``HfArgumentParser`` does, plus pydantic validation). ``--config FILE`` takes the same spelling as the
model (``per_identity: 20``; nested sections as mappings), and flags given on the command line win.
Validation errors name the flag (``--per-identity``), not the field.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from facesynth.core.config import load_config_file, load_yaml, parse_overrides
from facesynth.core.errors import ConfigError

logger = logging.getLogger(__name__)

_SCALARS = (int, float, str)
_METAVARS = {int: "INT", float: "FLOAT", str: "STR"}


@dataclass(frozen=True)
class CliSpec:
    """How one command exposes its config: which fields are positional, and any renamed spellings.

    ``flags`` replaces a field's option strings (first one primary, e.g. ``{"output_dir": ["--out"]}``);
    ``deprecated`` adds hidden old spellings that still work and log a deprecation note;
    ``exclude`` leaves fields to the command (set in code, not by the user); ``help`` gives help text for
    fields whose config has no ``description`` yet.
    """

    config: type[BaseModel]
    positional: tuple[str, ...] = ()
    flags: dict[str, list[str]] = field(default_factory=dict)
    deprecated: dict[str, list[str]] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    help: dict[str, str] = field(default_factory=dict)

    def options(self) -> list[FlagOption]:
        return list(_walk(self))


@dataclass(frozen=True)
class FlagOption:
    """One generated command-line option: the field path it sets and how it is spelled."""

    path: tuple[str, ...]
    info: Any  # pydantic FieldInfo
    annotation: Any
    option_strings: tuple[str, ...]  # empty for a positional
    hidden: tuple[str, ...]
    fallback_help: str | None = None

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    @property
    def display(self) -> str:
        return self.option_strings[0] if self.option_strings else self.path[-1].upper()


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _walk(spec: CliSpec):
    top = set(spec.config.model_fields)
    for name, info in spec.config.model_fields.items():
        if name in spec.exclude:
            continue
        annotation = _strip_optional(info.annotation)
        if _is_model(annotation):
            for sub_name, sub_info in annotation.model_fields.items():
                key = f"{name}.{sub_name}"
                if key in spec.exclude:
                    continue
                # a nested field keeps its own name unless that would collide with a top-level one
                flat = sub_name if sub_name not in top else f"{name}_{sub_name}"
                strings = tuple(spec.flags.get(key, [_flag(flat)]))
                yield FlagOption(
                    (name, sub_name), sub_info, _strip_optional(sub_info.annotation), strings,
                    tuple(spec.deprecated.get(key, [])), spec.help.get(key),
                )  # fmt: skip
            continue
        strings = () if name in spec.positional else tuple(spec.flags.get(name, [_flag(name)]))
        hidden = tuple(spec.deprecated.get(name, []))
        yield FlagOption((name,), info, annotation, strings, hidden, spec.help.get(name))


def field_default(info: Any) -> Any:
    """The model's default of a field (calling its factory), or PydanticUndefined when required."""
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()
    return PydanticUndefined


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) if value else "none"
    if isinstance(value, Path):
        return str(value)
    return "none" if value is None else str(value)


def _help(option: FlagOption) -> str:
    text = option.info.description or option.fallback_help or option.path[-1].replace("_", " ")
    text = text.rstrip(".")
    default = field_default(option.info)
    if default is PydanticUndefined:
        text += " (required)"
    else:
        text += f" (default: {_show(default)})"
    return text.replace("%", "%%")


def _yaml_value(text: str) -> Any:
    """A flag's value parsed as a YAML scalar or list, alias bombs refused (argparse reports the error)."""
    try:
        return load_yaml(text, source="command-line value")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _argparse_kwargs(option: FlagOption) -> dict[str, Any]:
    annotation = option.annotation
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = list(typing.get_args(annotation))
        return {"choices": choices, "type": type(choices[0])}
    if annotation in _SCALARS:
        return {"type": annotation, "metavar": _METAVARS[annotation]}
    if annotation is Path:
        return {"type": str, "metavar": "PATH"}
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = _strip_optional(args[0]) if args else str
        item_type = item if item in _SCALARS else (str if item is Path else _yaml_value)
        return {"nargs": "+", "type": item_type, "metavar": _METAVARS.get(item, "VALUE")}
    if origin is dict or annotation is dict:
        return {"action": "append", "metavar": "KEY=VALUE", "type": str}
    return {"type": _yaml_value, "metavar": "VALUE"}


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling: sets the same field as the new flag and says which one to use."""

    def __init__(self, *args: Any, inner: argparse.Action, **kwargs: Any):
        self.inner = inner
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        if isinstance(self.inner, argparse.BooleanOptionalAction):
            value = not str(option_string).startswith("--no-")
            new = self.inner.option_strings[0 if value else 1]
            setattr(namespace, self.dest, value)
        else:
            new = self.inner.option_strings[0]
            self.inner(parser, namespace, values, new)
        logger.warning("%s is deprecated; use %s", option_string, new)


def add_config_arguments(parser: argparse.ArgumentParser, spec: CliSpec) -> None:
    """Add one argument per config field to ``parser`` (defaults stay in the model)."""
    for option in spec.options():
        kwargs = _argparse_kwargs(option)
        kwargs["help"] = _help(option)
        kwargs["default"] = argparse.SUPPRESS
        if not option.option_strings:
            if kwargs.get("nargs") == "+":
                kwargs["nargs"] = "*"
            else:
                kwargs["nargs"] = "?"
            kwargs.setdefault("metavar", option.path[-1].upper())
            action = parser.add_argument(option.dest, **kwargs)
        else:
            if kwargs.get("nargs") == "+":
                kwargs["action"] = "extend"  # `--tags a --tags b` gives both, like `--tags a b`
            action = parser.add_argument(*option.option_strings, dest=option.dest, **kwargs)
        for old in option.hidden:
            alias_kwargs = {k: v for k, v in kwargs.items() if k not in ("help", "action")}
            if kwargs.get("action") is argparse.BooleanOptionalAction:
                alias_kwargs["nargs"] = 0
            parser.add_argument(
                old,
                dest=option.dest,
                action=_DeprecatedAlias,
                inner=action,
                help=argparse.SUPPRESS,
                **alias_kwargs,
            )
    parser.set_defaults(_cli_spec=spec)


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _explicit_settings(spec: CliSpec, args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for option in spec.options():
        if not hasattr(args, option.dest):
            continue
        value = getattr(args, option.dest)
        if option.option_strings == () and value in (None, []):
            continue  # an omitted positional
        annotation = option.annotation
        if typing.get_origin(annotation) is dict or annotation is dict:
            value = parse_overrides(value)
        _set_path(settings, option.path, value)
    return settings


def normalise_file_settings(spec: CliSpec, data: dict[str, Any], source: str) -> dict[str, Any]:
    """Config-file keys (field names, ``-`` or ``_``; nested sections or their flattened flag names)."""
    by_name: dict[str, tuple[str, ...]] = {}
    for option in spec.options():
        by_name[option.path[0]] = option.path[:1]
        for spelling in (*option.option_strings, *option.hidden):
            by_name[spelling.lstrip("-").replace("-", "_")] = option.path
        if len(option.path) > 1:
            by_name[option.path[-1]] = option.path
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        path = by_name.get(name)
        if path is None:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
        if len(path) == 1 and isinstance(value, dict) and isinstance(settings.get(name), dict):
            value = _deep_merge(settings[name], value)
        _set_path(settings, path, value)
    return settings


def _format_errors(spec: CliSpec, exc: ValidationError, source: str) -> str:
    names = {option.path: option.display for option in spec.options()}
    lines = [f"invalid settings ({source})" if source else "invalid settings"]
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        name = names.get(loc[:2]) or names.get(loc[:1]) or ".".join(loc) or "settings"
        if len(loc) > 1 and loc[:2] not in names and loc[:1] in names:
            name += "." + ".".join(loc[1:])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {name}: unknown setting")
        elif err["type"] == "missing":
            lines.append(f"  {name}: required")
        elif not loc:
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(
                f"  {name}: bad value {err.get('input')!r} ({err['msg'].removeprefix('Value error, ')})"
            )
    return "\n".join(lines)


def settings_from_args(spec: CliSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The settings a command line asks for: ``--config FILE`` values overlaid by explicit flags."""
    settings: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        settings = normalise_file_settings(spec, load_config_file(config_file), str(config_file))
    return _deep_merge(settings, _explicit_settings(spec, args))


def config_from_args(
    spec: CliSpec, args: argparse.Namespace, fixed: dict[str, Any] | None = None
) -> BaseModel:
    """Validate the command line (plus ``--config`` and ``fixed`` values set by the command) into the config."""
    settings = _deep_merge(settings_from_args(spec, args), fixed or {})
    try:
        return spec.config.model_validate(settings)
    except ValidationError as exc:
        source = str(getattr(args, "config", None) or "")
        raise ConfigError(_format_errors(spec, exc, source)) from None


def to_argv(spec: CliSpec, settings: dict[str, Any]) -> list[str]:
    """The command-line arguments that set ``settings`` (nested like the config), e.g. to print a rerun command."""
    argv: list[str] = []
    # positionals first: after a several-valued flag they would be read as its values
    options = sorted(spec.options(), key=lambda o: bool(o.option_strings))
    for option in options:
        value: Any = settings
        for key in option.path:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            if not option.option_strings:
                argv += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
                continue
            flag = option.option_strings[-1] if len(option.option_strings) > 1 else option.option_strings[0]
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag.removeprefix("--"))
            elif isinstance(value, dict):
                for key, item in value.items():
                    argv += [flag, f"{key}={json.dumps(item)}"]
            elif isinstance(value, list | tuple):
                argv += [flag, *(str(v) for v in value)]
            elif value is not None:
                argv += [flag, str(value)]
    return argv
