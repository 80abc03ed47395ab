"""The layers of docs/DESIGN.md, enforced by walking every module's imports (AST, no import run).

``pipelines -> generators, privacy, data_cards -> recognizers -> core``: a package may import
itself and the packages its entry lists; nothing imports ``pipelines`` but ``pipelines`` itself
(and the tests and benchmarks, which sit outside the layers). Module-level imports must also form no
cycle: a cycle makes import order matter and hides a layer that is missing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package -> the facesynth packages it may import (besides itself and the root ``facesynth``).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "recognizers": {"core"},
    "generators": {"recognizers", "core"},
    "privacy": {"recognizers", "core"},
    "data_cards": {"core"},
    "pipelines": {"generators", "privacy", "data_cards", "recognizers", "core"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found["facesynth." + ".".join(parts)] = path
    return found


def _imports(path: Path, module: str, top_level_only: bool) -> list[tuple[int, str]]:
    """(line, imported facesynth module) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports guarded by `if TYPE_CHECKING:` are not run: skip those
        nodes = [n for n in nodes if isinstance(n, ast.Import | ast.ImportFrom)]
    result = []
    for node in nodes:
        if isinstance(node, ast.Import):
            result += [(node.lineno, a.name) for a in node.names if a.name.startswith("facesynth")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                package = module.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            if base.startswith("facesynth"):
                names = [f"{base}.{a.name}" for a in node.names]
                result += [(node.lineno, n) for n in names]
    return result


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_every_import_follows_the_layers() -> None:
    modules = _modules()
    assert len(modules) > 50, "the walk found too few modules; is ROOT right?"
    violations = []
    for module, path in modules.items():
        own = _package_of(module)
        for line, target in _imports(path, module, top_level_only=False):
            other = _package_of(target)
            if other is None or other == own:
                continue
            if other not in ALLOWED[own]:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {own} -> {other} ({target})")
    assert not violations, "imports against the layers of docs/DESIGN.md:\n" + "\n".join(violations)


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import name refers to (``a.b.name`` -> ``a.b`` when ``name`` is no module)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {
        module: {
            dep
            for _, target in _imports(path, module, top_level_only=True)
            if (dep := _resolve(target, modules)) and dep != module and not module.startswith(dep + ".")
        }
        for module, path in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layer_walk_sees_a_planted_violation(tmp_path: Path, package: str) -> None:
    """The checker itself can fail: a module importing pipelines is reported for every layer but pipelines."""
    path = tmp_path / "planted.py"
    path.write_text("from facesynth.pipelines.cli import main\n", encoding="utf-8")
    targets = [
        _package_of(t) for _, t in _imports(path, f"facesynth.{package}.planted", top_level_only=False)
    ]
    assert targets == ["pipelines"]
    assert ("pipelines" in ALLOWED[package] or package == "pipelines") == (package == "pipelines")
