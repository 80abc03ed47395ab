"""Run the facesynth CLI in child processes: one process, or several under torchrun (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(
    *args: str, nproc: int = 1, port: int = 29533, timeout: float = 300, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    """``facesynth ARGS`` as a subprocess; with ``nproc`` > 1 under ``torchrun --nproc_per_node``."""
    launcher = (
        ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]
        if nproc > 1
        else []
    )
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | (env_extra or {})
    return subprocess.run(
        [sys.executable, *launcher, "-m", "facesynth.pipelines.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
