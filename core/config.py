"""Validated stage configs.

Each stage's settings are a pydantic model deriving from :class:`StageConfig`. Unknown fields are
refused, and a bad value is reported as ``field 'x': <value> (reason)`` through
:class:`~facesynth.core.errors.ConfigError`, whether it came from the CLI, a config file or a
library call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from facesynth.core.errors import ConfigError

T = TypeVar("T", bound="StageConfig")


class StageConfig(BaseModel):
    """Base of every stage config: strict about unknown fields, assignable after validation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def from_mapping(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
        """Validate ``data`` and raise a readable :class:`ConfigError` naming every bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid settings"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"  field {field!r}: unknown field")
        elif err["type"] == "missing":
            lines.append(f"  field {field!r}: required but missing")
        else:
            lines.append(f"  field {field!r}: bad value {value!r} ({err['msg']})")
    return "\n".join(lines)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON config file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = load_yaml(text, str(path))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse config ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["kappa=0.5", "steps=50"]`` -> ``{"kappa": 0.5, "steps": 50}`` (values parsed as YAML scalars)."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"option {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            result[key.strip()] = load_yaml(value, f"option {key.strip()!r}")
        except yaml.YAMLError as exc:
            raise ConfigError(f"option {pair!r}: value is not valid YAML ({exc})") from None
    return result


#: Most nodes a config may expand to once YAML aliases are followed (a "billion laughs" file of a
#: few hundred bytes expands to 10^9): refused before anything is built.
MAX_YAML_NODES = 100_000


def load_yaml(text: str, source: str = "config") -> Any:
    """``yaml.safe_load`` that measures the document with its aliases expanded *before* building it,
    and refuses one larger than :data:`MAX_YAML_NODES` with :class:`ConfigError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(n: yaml.Node, depth: int = 0) -> int:
            if id(n) in sizes:
                return sizes[id(n)]
            if depth > 100:
                raise ConfigError(f"{source}: YAML nested more than 100 levels deep")
            total = 1
            if isinstance(n, yaml.SequenceNode):
                total += sum(expanded(child, depth + 1) for child in n.value)
            elif isinstance(n, yaml.MappingNode):
                total += sum(expanded(k, depth + 1) + expanded(v, depth + 1) for k, v in n.value)
            sizes[id(n)] = min(total, MAX_YAML_NODES + 1)
            return sizes[id(n)]

        if expanded(node) > MAX_YAML_NODES:
            raise ConfigError(
                f"{source}: YAML expands to more than {MAX_YAML_NODES:,} nodes once its aliases are "
                "followed (an alias bomb?); refused before loading"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()
