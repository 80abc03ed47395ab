"""One registry class for every pluggable kind: generators, backbones, margin heads, recognition methods.

Modelled on timm's ``_registry.py``: a name maps to an object (a class or a factory), and a lazy map of
*built-in provider modules* (name -> dotted module path) lets a lookup import the module that registers
the name the first time it is asked for. So ``build_method("dctdp")`` works in a fresh interpreter with
no prior ``import facesynth.privacy``, and the CLI can list choices without importing torch-heavy code.

Providers register with the decorator returned by :meth:`Registry.register`; the lazy map is given when
the registry is made, as strings, so a lower layer can name providers in a higher one without importing
them (the import happens only on lookup, as in timm).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Generic, TypeVar

from facesynth.core.errors import ConfigError

T = TypeVar("T")

#: Every registry made so far, so that tests can restore them all (:func:`all_registries_restored`).
_ALL_REGISTRIES: list[Registry] = []


class Registry(Generic[T]):
    """Name -> object, with lazily imported built-in providers and a duplicate-registration guard.

    Args:
        kind: what the names name, for messages ("generator", "backbone", ...).
        builtin_modules: name -> module that registers it when imported (imported on first lookup).
    """

    def __init__(self, kind: str, builtin_modules: Mapping[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._builtin_modules: dict[str, str] = dict(builtin_modules or {})
        _ALL_REGISTRIES.append(self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``obj`` available as ``name``; a second, different object for a name is refused.

        Re-registering the same definition (same module and qualified name, e.g. after a module reload)
        replaces the entry quietly.
        """

        def decorator(obj: T) -> T:
            current = self._entries.get(name)
            if current is not None and current is not obj and _identity(current) != _identity(obj):
                raise ValueError(f"{self.kind} {name!r} is already registered by {_identity(current)}")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its built-in provider first if needed."""
        if name not in self._entries and name in self._builtin_modules:
            importlib.import_module(self._builtin_modules[name])
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every name a lookup accepts: registered ones and built-ins not imported yet, sorted."""
        return sorted(set(self._entries) | set(self._builtin_modules))

    def load_builtins(self) -> dict[str, T]:
        """Import every built-in provider; returns the full name -> object map (a copy)."""
        for module in sorted(set(self._builtin_modules.values())):
            importlib.import_module(module)
        return dict(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._builtin_modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    @contextmanager
    def restored(self) -> Iterator[Registry[T]]:
        """Context manager for tests: names registered inside are forgotten on exit, replaced ones restored.

        Built-in providers imported inside stay registered (their modules stay imported, so they could
        not register again).
        """
        saved_entries = dict(self._entries)
        saved_builtins = dict(self._builtin_modules)
        try:
            yield self
        finally:
            self._builtin_modules.clear()
            self._builtin_modules.update(saved_builtins)
            for name in list(self._entries):
                if name in saved_entries:
                    self._entries[name] = saved_entries[name]
                elif name not in saved_builtins:
                    del self._entries[name]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


@contextmanager
def all_registries_restored() -> Iterator[None]:
    """Context manager: every registry existing on entry is :meth:`Registry.restored` on exit (tests)."""
    with ExitStack() as stack:
        for registry in list(_ALL_REGISTRIES):
            stack.enter_context(registry.restored())
        yield


def _identity(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
