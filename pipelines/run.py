"""``facesynth run CONFIG`` / ``facesynth demo``: a graph of stages from one config file, resumable.

A run file names its stages and how they feed each other (:mod:`facesynth.pipelines.run_graph`);
the stage kinds are in :mod:`facesynth.pipelines.run_stages`. The whole file is validated before
any stage starts. ``RUN_DIR/stages.json`` records each stage's hash (settings and everything
upstream); a rerun skips stages whose hash matches and whose output exists, and resumes the rest
(generation reuses finished shards, training resumes from its last checkpoint). ``RUN_DIR/run.log``
holds the whole run's log, ``RUN_DIR/report.md`` / ``report.html`` its summary.

Top-level keys starting with ``x-`` hold YAML anchors to reuse (``<<: *train``) and are ignored.
Named recipes ship in ``pipelines/configs/<name>.yaml`` (:func:`recipe_names`). Older run files
with ``train_data`` / ``eval_data`` / ``pairs`` / ... sections are converted to the graph form.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from facesynth.core.config import StageConfig, load_config_file
from facesynth.core.errors import ConfigError
from facesynth.pipelines.run_graph import PlannedStage, StageSpec, execute, plan_run

logger = logging.getLogger(__name__)
# The runner's own lines (stage progress, result tables) go to the terminal by print and to run.log by
# this logger, which does not propagate: the root handler would print each line a second time.
progress_logger = logging.getLogger(f"{__name__}.progress")
progress_logger.propagate = False

LEGACY_SECTIONS = ("train_data", "eval_data", "pairs", "train_recognizer", "bench", "quality", "card")


class RunConfig(StageConfig):
    """One file drives the whole pipeline: a run folder and named stages."""

    run_dir: Path
    description: str = ""
    stages: dict[str, StageSpec] = Field(min_length=1)
    skip: list[str] = Field(default_factory=list, description="stage names or kinds to leave out")
    processes: int = Field(
        default=1, ge=1, description="processes (GPUs) for training and generation stages; >1 launches them"
    )
    launcher: list[str] | None = Field(
        default=None,
        description="command prefix that starts several processes (default: python -m torch.distributed.run "
        "--nproc_per_node PROCESSES); e.g. [accelerate, launch, --multi_gpu, --num_processes, '8']",
    )
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named sets of dotted overrides (e.g. quick: {stages.id3.settings.max_steps: 50})",
    )


def recipe_names() -> list[str]:
    """The run recipes shipped with the package (``configs/*.yaml`` with a ``stages`` section)."""
    folder = resources.files("facesynth.pipelines").joinpath("configs")
    return sorted(
        p.name[: -len(".yaml")]
        for p in folder.iterdir()
        if p.name.endswith(".yaml") and any(line.startswith("stages:") for line in p.read_text().splitlines())
    )


def builtin_config(name: str = "demo") -> dict[str, Any]:
    """A recipe shipped with the package (``pipelines/configs/<name>.yaml``) as a dict."""
    if name not in recipe_names():
        raise ConfigError(f"no recipe named {name!r} (recipes: {', '.join(recipe_names())})")
    return yaml.safe_load(recipe_text(name))


def recipe_text(name: str) -> str:
    return (
        resources.files("facesynth.pipelines").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")
    )


def legacy_to_graph(data: dict[str, Any]) -> dict[str, Any]:
    """Convert the older section-per-stage run file (generate train/eval -> ... -> card) to stages."""
    data = dict(data)
    stages: dict[str, Any] = {
        "train_data": {"kind": "generate", "settings": data.pop("train_data")},
        "eval_data": {"kind": "generate", "settings": data.pop("eval_data")},
        "pairs": {"kind": "pairs", "inputs": {"dataset": "eval_data"}, "settings": data.pop("pairs", {})},
        "recognizer": {
            "kind": "train_recognizer",
            "inputs": {"data": ["train_data"], "benchmarks": ["pairs"]},
            "settings": data.pop("train_recognizer", {}),
        },
        "bench": {
            "kind": "bench",
            "inputs": {"models": ["recognizer"], "benchmarks": ["pairs"]},
            "settings": data.pop("bench", {}),
        },
    }
    quality = dict(data.pop("quality", {}))
    quality_inputs: dict[str, Any] = {"dataset": "train_data"}
    if quality.get("encoder") == "trained":
        quality.pop("encoder")
        quality_inputs["encoder"] = "recognizer"
    stages["quality"] = {"kind": "quality", "inputs": quality_inputs, "settings": quality}
    stages["card"] = {
        "kind": "card",
        "inputs": {"folder": "train_data", "quality": "quality"},
        "settings": data.pop("card", {}),
    }
    aliases = {"generate_train": "train_data", "generate_eval": "eval_data", "train_recognizer": "recognizer"}
    data["skip"] = [aliases.get(s, s) for s in data.get("skip", [])]
    data["stages"] = stages
    return data


def parse_set_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``["stages.id3.settings.max_steps=10"]`` -> ``{"stages.id3.settings.max_steps": 10}`` (YAML values)."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY.PATH=VALUE")
        result[key.strip()] = yaml.safe_load(value)
    return result


def apply_overrides(data: dict[str, Any], dotted: dict[str, Any], source: str = "--set") -> dict[str, Any]:
    """Set dotted keys (``stages.id3.settings.max_steps``) in a copy of ``data``."""
    data = copy.deepcopy(data)
    for key, value in dotted.items():
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = target.get(part) if isinstance(target, dict) else None
            if nxt is None:
                nxt = target[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source} {key!r}: {part!r} is not a section")
            target = nxt
        target[parts[-1]] = value
    return data


def apply_profile(data: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """Apply the run file's named profile (``profiles: {quick: {...}}``)."""
    if profile is None:
        return data
    profiles = data.get("profiles") or {}
    if profile not in profiles:
        raise ConfigError(
            f"field 'profiles': no profile {profile!r} (profiles: {', '.join(profiles) or 'none'})"
        )
    return apply_overrides(data, profiles[profile], source=f"profile {profile}:")


def load_run_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    settings: list[str] | None = None,
    recipe: str | None = None,
    profile: str | None = None,
) -> RunConfig:
    """Read a run file (or a named recipe; default the demo), apply a profile, ``--set`` pairs and overrides."""
    if path is not None and not Path(path).exists() and str(path) in recipe_names():
        path, recipe = None, str(path)
    data = builtin_config(recipe or "demo") if path is None else load_config_file(path)
    source = str(path) if path is not None else f"recipe {recipe or 'demo'}"
    data = {k: v for k, v in data.items() if not str(k).startswith("x-")}  # YAML anchors for reuse
    if "stages" not in data and any(k in data for k in LEGACY_SECTIONS):
        data = legacy_to_graph(data)
    data = apply_overrides(apply_profile(data, profile), parse_set_pairs(settings))
    data.update(overrides or {})
    return RunConfig.from_mapping(data, source=source)


def plan(config: RunConfig) -> list[PlannedStage]:
    """Validate the whole graph (every stage's settings included) without running anything."""
    from facesynth.pipelines.run_stages import STAGE_KINDS

    return plan_run(Path(config.run_dir), config.stages, STAGE_KINDS)


def run_pipeline(
    config: RunConfig,
    *,
    show_progress: bool = True,
    echo: Callable[[str], None] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every stage of ``config``; returns the ledger (stage name -> record)."""
    planned = plan(config)  # refuses a bad file before anything is written
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.yaml").write_text(
        yaml.safe_dump(config.to_json_dict(), sort_keys=False), encoding="utf-8"
    )
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("facesynth")
    old_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    progress_logger.addHandler(handler)
    progress_logger.setLevel(logging.INFO)

    def say(line: str) -> None:
        progress_logger.info(line)
        (echo or print)(line)

    started = time.perf_counter()
    try:
        say(f"run {run_dir}: {len(planned)} stages")
        launch = None
        if config.processes > 1 or config.launcher:
            from facesynth.pipelines.run_stage import launch_stage

            def launch(stage: PlannedStage, context: Any) -> dict[str, Any]:
                return launch_stage(
                    stage.spec.kind,
                    stage.config,
                    stage.stage_dir,
                    config.processes,
                    config.launcher,
                    show_progress,
                    context.resuming,
                )

        records = execute(
            planned, run_dir, say, show_progress=show_progress, skip=tuple(config.skip), launch=launch
        )
        if report:
            from facesynth.pipelines.report import write_run_report

            files = write_run_report(config, planned, records, time.perf_counter() - started)
            say(files["terminal"])
            say(f"report: {files['markdown']} ({files['html']})")
    except Exception:
        logger.exception("run stopped")
        raise
    finally:
        package_logger.removeHandler(handler)
        progress_logger.removeHandler(handler)
        package_logger.setLevel(old_level)
        handler.close()
    return records
