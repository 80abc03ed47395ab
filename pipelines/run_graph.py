"""The run graph: named stages that consume each other's outputs, checked whole, run in order, resumable.

A run file lists stages by name. Each stage has a ``kind`` (a stage function, see
:mod:`facesynth.pipelines.run_stages`), ``settings`` (that function's own config fields) and
``inputs`` (config fields filled with the output of an upstream stage, named by that stage's name)::

    stages:
      faces:   {kind: generate, settings: {identities: 40, per_identity: 6}}
      model:   {kind: train_recognizer, inputs: {data: faces}, settings: {backbone: tiny}}

Before anything runs, :func:`plan_run` checks the whole file: known kinds, known input fields,
references to existing stages whose output has the right type, no cycle, and every stage's settings
validated by its own pydantic config (with the upstream paths filled in). Each error names the stage
and the field. Stages then run in dependency order (file order among independent ones). A stage's
hash covers its kind, its settings and the hashes of its inputs, so changing one setting reruns that
stage and everything downstream of it, and nothing else; a stage whose hash matches and whose output
still exists is skipped.
"""

from __future__ import annotations

import copy
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from facesynth.core.atomic_io import config_hash, write_json_atomic
from facesynth.core.config import StageConfig
from facesynth.core.errors import ConfigError

LEDGER_NAME = "stages.json"
STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class StageSpec(StageConfig):
    """One stage of a run file."""

    kind: str = Field(description="stage kind (ingest, train_generator, generate, pairs, ...)")
    inputs: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="config field -> name(s) of the upstream stage(s) whose output it takes",
    )
    settings: dict[str, Any] = Field(default_factory=dict, description="the stage config's own fields")


@dataclass(frozen=True)
class InputSlot:
    """A config field that can take an upstream stage's output.

    ``field`` is a dotted path into the settings (``options.pipeline``) or None for an input that
    only orders stages (the card waits for the quality report it reads from the dataset folder).
    ``encoder`` turns a model folder into an encoder spec ``torch:PATH``.
    """

    field: str | None
    accepts: tuple[str, ...]
    many: bool = False
    encoder: bool = False


@dataclass(frozen=True)
class StageKind:
    """How the runner drives one stage function."""

    name: str
    produces: str
    config_class: Callable[[], type[StageConfig]]
    inputs: Mapping[str, InputSlot]
    run: Callable[[Any, RunContext], dict[str, Any]]
    output_field: str | None = None
    output_of: Callable[[Any, Path], Path] = lambda config, stage_dir: stage_dir
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    #: runs under a multi-process launcher when the run file asks for several processes
    distributed: bool = False


@dataclass
class RunContext:
    """What a stage function gets besides its config."""

    run_dir: Path
    stage_name: str
    stage_dir: Path
    show_progress: bool
    resuming: bool
    input_stages: dict[str, list[str]]


@dataclass
class PlannedStage:
    name: str
    kind: StageKind
    spec: StageSpec
    config: Any
    digest: str
    stage_dir: Path
    output: Path
    upstream: list[str]


def _set_dotted(target: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _get_dotted(target: Mapping[str, Any], path: str) -> Any:
    for key in path.split("."):
        if not isinstance(target, Mapping) or key not in target:
            return None
        target = target[key]
    return target


def _refs(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def topological_order(stages: Mapping[str, StageSpec]) -> list[str]:
    """Stage names with every input before its consumer (file order otherwise); refuses a cycle."""
    deps = {
        name: [r for v in spec.inputs.values() for r in _refs(v) if r in stages]
        for name, spec in stages.items()
    }
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = path[path.index(name) :] + [name]
            field_name = next(k for k, v in stages[cycle[-2]].inputs.items() if name in _refs(v))
            raise ConfigError(
                f"stage {cycle[-2]!r} field 'inputs.{field_name}': the stages form a cycle "
                f"({' -> '.join(reversed(cycle))})"
            )
        state[name] = "active"
        for dep in deps[name]:
            visit(dep, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in stages:
        visit(name, [])
    return order


def plan_run(
    run_dir: Path, stages: Mapping[str, StageSpec], kinds: Mapping[str, StageKind]
) -> list[PlannedStage]:
    """Check the whole graph and build every stage's validated config; raise one ConfigError listing all problems."""
    problems: list[str] = []
    for name, spec in stages.items():
        if not STAGE_NAME.match(name):
            problems.append(f"stage {name!r}: a name is letters, digits, '_' or '-', starting with a letter")
        kind = kinds.get(spec.kind)
        if kind is None:
            problems.append(
                f"stage {name!r} field 'kind': unknown stage kind {spec.kind!r} (known: {', '.join(sorted(kinds))})"
            )
            continue
        for slot_name, value in spec.inputs.items():
            slot = kind.inputs.get(slot_name)
            where = f"stage {name!r} field 'inputs.{slot_name}'"
            if slot is None:
                known = ", ".join(kind.inputs) or "none"
                problems.append(f"{where}: {spec.kind} has no such input (inputs: {known})")
                continue
            refs = _refs(value)
            if not slot.many and len(refs) != 1:
                problems.append(f"{where}: takes one stage, got {refs}")
            for ref in refs:
                upstream = stages.get(ref)
                if upstream is None:
                    problems.append(f"{where}: no stage named {ref!r} (stages: {', '.join(stages)})")
                elif upstream.kind in kinds and kinds[upstream.kind].produces not in slot.accepts:
                    problems.append(
                        f"{where}: stage {ref!r} ({upstream.kind}) makes {kinds[upstream.kind].produces}, "
                        f"this input takes {' or '.join(slot.accepts)}"
                    )
    if problems:
        raise ConfigError("run config: invalid stages\n  " + "\n  ".join(problems))
    order = topological_order(stages)

    planned: dict[str, PlannedStage] = {}
    for name in order:
        spec, kind = stages[name], kinds[stages[name].kind]
        stage_dir = run_dir / name
        settings = copy.deepcopy({**kind.defaults, **spec.settings})  # inputs fill nested fields
        upstream: list[str] = []
        input_hashes: dict[str, list[str]] = {}
        for slot_name, value in spec.inputs.items():
            slot = kind.inputs[slot_name]
            refs = _refs(value)
            upstream += refs
            # an upstream stage with invalid settings is reported already; check this one with its folder
            outputs = [planned[r].output if r in planned else run_dir / r for r in refs]
            input_hashes[slot_name] = [planned[r].digest if r in planned else "" for r in refs]
            if slot.field is None:
                continue
            paths = [f"torch:{out}" if slot.encoder else str(out) for out in outputs]
            given = _get_dotted(spec.settings, slot.field)
            if given is not None and not slot.many:
                problems.append(
                    f"stage {name!r} field 'settings.{slot.field}': also given by inputs.{slot_name}; give one"
                )
                continue
            if slot.many:
                paths = [*_refs(given or []), *paths]
            _set_dotted(settings, slot.field, paths if slot.many else paths[0])
        if kind.output_field is not None:
            if kind.output_field in spec.settings:
                problems.append(
                    f"stage {name!r} field 'settings.{kind.output_field}': set by the runner (RUN_DIR/{name})"
                )
                continue
            settings[kind.output_field] = str(stage_dir)
        try:
            config = kind.config_class().from_mapping(
                settings, source=f"stage {name!r} ({spec.kind}) settings"
            )
        except ConfigError as exc:
            problems.append(str(exc).replace("\n", "\n  "))
            continue
        digest = config_hash(
            {
                "kind": spec.kind,
                "settings": spec.settings,
                "inputs": input_hashes,
                "defaults": dict(kind.defaults),
            }
        )
        planned[name] = PlannedStage(
            name, kind, spec, config, digest, stage_dir, kind.output_of(config, stage_dir), upstream
        )
    if problems:
        raise ConfigError("run config: invalid stages\n  " + "\n  ".join(problems))
    return [planned[name] for name in order]


class StageLedger:
    """``RUN_DIR/stages.json``: per stage, the hash it last started or finished under, time and summary."""

    def __init__(self, run_dir: Path):
        import json

        self.path = run_dir / LEDGER_NAME
        self.records: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def is_done(self, stage: PlannedStage) -> bool:
        record = self.records.get(stage.name, {})
        return record.get("hash") == stage.digest and record.get("status") == "done" and stage.output.exists()

    def interrupted(self, stage: PlannedStage) -> bool:
        """Started under these settings and never finished: resume it, keeping its partial work."""
        record = self.records.get(stage.name, {})
        return record.get("hash") == stage.digest and record.get("status") == "running"

    def mark(self, stage: PlannedStage, status: str, **details: Any) -> None:
        self.records[stage.name] = {
            "hash": stage.digest,
            "kind": stage.spec.kind,
            "status": status,
            **details,
        }
        write_json_atomic(self.path, self.records)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


@dataclass
class RunProgress:
    """One line per stage (elapsed, ETA) on the terminal and in the run log.

    The ETA sums, over the stages still to run, their time in the ledger from an earlier run when it
    has one and otherwise the mean time of the stages run so far.
    """

    total: int
    previous: dict[str, float]
    echo: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    durations: list[float] = field(default_factory=list)

    def eta(self, remaining: list[str]) -> str:
        if not remaining:
            return "0:00"
        mean = sum(self.durations) / len(self.durations) if self.durations else None
        guesses = [self.previous.get(name, mean) for name in remaining]
        if any(g is None for g in guesses):
            return "?"
        return "~" + _clock(sum(guesses))

    def line(self, index: int, stage: PlannedStage, status: str, remaining: list[str]) -> None:
        elapsed = _clock(time.perf_counter() - self.started)
        self.echo(
            f"[{index}/{self.total}] {stage.name:<20s} {stage.spec.kind:<16s} {status:<28s} "
            f"elapsed {elapsed}  ETA {self.eta(remaining)}"
        )


def execute(
    planned: list[PlannedStage],
    run_dir: Path,
    echo: Callable[[str], None],
    show_progress: bool = True,
    skip: tuple[str, ...] = (),
    launch: Callable[[PlannedStage, RunContext], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run (or skip, or resume) every planned stage in order; returns the ledger records.

    ``launch`` runs the ``distributed`` stages instead of calling them in this process.
    """
    ledger = StageLedger(run_dir)
    previous = {
        name: float(r["seconds"])
        for name, r in ledger.records.items()
        if r.get("status") == "done" and "seconds" in r
    }
    progress = RunProgress(len(planned), previous, echo)
    names = [s.name for s in planned]
    for index, stage in enumerate(planned, start=1):
        remaining = names[index:]
        if stage.name in skip or stage.spec.kind in skip:
            progress.line(index, stage, "skipped (--skip)", remaining)
            continue
        if ledger.is_done(stage):
            progress.line(index, stage, "done earlier, skipped", remaining)
            continue
        resuming = ledger.interrupted(stage)
        if not resuming and stage.kind.output_field is not None and stage.stage_dir.exists():
            shutil.rmtree(stage.stage_dir)  # made under other settings: start clean
        progress.line(index, stage, "resuming" if resuming else "running", [stage.name, *remaining])
        ledger.mark(stage, "running")
        context = RunContext(
            run_dir,
            stage.name,
            stage.stage_dir,
            show_progress,
            resuming,
            {k: _refs(v) for k, v in stage.spec.inputs.items()},
        )
        began = time.perf_counter()
        if launch is not None and stage.kind.distributed:
            summary = launch(stage, context)
        else:
            summary = stage.kind.run(stage.config, context) or {}
        seconds = time.perf_counter() - began
        progress.durations.append(seconds)
        ledger.mark(stage, "done", seconds=round(seconds, 2), output=str(stage.output), **summary)
        progress.line(index, stage, f"done in {_clock(seconds)}", remaining)
    return ledger.records
