"""One stage of a run in its own processes: how the runner spreads training and generation over GPUs.

The runner itself stays one process. A stage kind marked ``distributed`` (train_generator, generate,
train_recognizer), in a run file with ``processes: N`` > 1, is started as

    python -m torch.distributed.run --nproc_per_node N -m facesynth.pipelines.run_stage KIND CONFIG SUMMARY DIR

(or the run file's own ``launcher`` prefix, e.g. ``accelerate launch --multi_gpu ...``); every
process validates the same config JSON and calls the same stage function, which Accelerate splits
across processes; the main process writes the stage's summary JSON for the runner to record.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from facesynth.core.errors import FacesynthError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_stage(
    kind: str,
    config: Any,
    stage_dir: Path,
    processes: int,
    launcher: list[str] | None = None,
    show_progress: bool = True,
    resuming: bool = False,
) -> dict[str, Any]:
    """Run one stage under a multi-process launcher and return its summary."""
    work = stage_dir.parent / ".launch"  # not inside the stage's output: a dataset folder gets published
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / f"{stage_dir.name}.config.json"
    summary_path = work / f"{stage_dir.name}.summary.json"
    config_path.write_text(config.model_dump_json(indent=2), encoding="utf-8")
    summary_path.unlink(missing_ok=True)
    prefix = launcher or [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
    ]
    command = [
        *prefix,
        "-m",
        "facesynth.pipelines.run_stage",
        kind,
        str(config_path),
        str(summary_path),
        str(stage_dir),
    ]
    command += [flag for flag, on in (("--no-progress", not show_progress), ("--resuming", resuming)) if on]
    done = subprocess.run(command, check=False)
    if done.returncode != 0 or not summary_path.is_file():
        raise FacesynthError(
            f"stage {stage_dir.name} ({kind}): `{' '.join(command)}` exited {done.returncode}"
        )
    return json.loads(summary_path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    from facesynth.core.atomic_io import write_json_atomic
    from facesynth.pipelines.run_graph import RunContext
    from facesynth.pipelines.run_stages import STAGE_KINDS

    args = list(sys.argv[1:] if argv is None else argv)
    show_progress, resuming = "--no-progress" not in args, "--resuming" in args
    kind_name, config_path, summary_path, stage_dir = [a for a in args if not a.startswith("--")]
    kind = STAGE_KINDS[kind_name]
    config = kind.config_class().model_validate_json(Path(config_path).read_text(encoding="utf-8"))
    stage_dir = Path(stage_dir)
    context = RunContext(stage_dir.parent, stage_dir.name, stage_dir, show_progress, resuming, {})
    summary = kind.run(config, context) or {}
    if int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(summary_path, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
