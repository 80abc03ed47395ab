"""Run the facesynth CLI in child processes: one process, or several under torchrun (gloo on CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port nothing listens on now, so concurrent torchrun tests never share a rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(
    *args: str, nproc: int = 1, port: int | None = None, timeout: float = 300, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    """``facesynth ARGS`` as a subprocess; with ``nproc`` > 1 under ``torchrun --nproc_per_node``."""
    launcher = (
        [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port or free_port()),
        ]
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
