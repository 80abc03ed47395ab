"""User-facing errors.

A :class:`FacesynthError` carries a message meant for a person (it names the file, field or value at
fault); the CLI prints it without a traceback and exits with status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class FacesynthError(Exception):
    """An error caused by bad input, configuration or environment, explained in its message."""


class ConfigError(FacesynthError):
    """A configuration field has a bad value."""


class ShardError(FacesynthError):
    """A shard or dataset folder is missing, truncated, foreign or inconsistent."""
