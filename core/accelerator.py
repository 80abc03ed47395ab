"""accelerate's process state, set up the same way by every stage.

Two things every stage needs and plain ``Accelerator()`` does not give:

- **CPU-only multi-process runs.** Under ``torchrun --nproc_per_node K`` on a machine without an
  accelerator, ``Accelerator()`` leaves each process on its own (K independent single-process runs
  writing the same files); with ``cpu=True`` it joins them in a gloo process group. So ``cpu`` is set
  exactly when no accelerator (CUDA, XPU, MPS) is present; on GPUs nothing changes.
- **Several runs in one process** (library use, experiments): accelerate keeps device and mixed
  precision in process-wide singletons and refuses a second ``Accelerator`` whose
  ``mixed_precision`` differs from the first one's. Before each run the mixed-precision layer
  (``AcceleratorState``) is cleared when it disagrees; the process-group layer (``PartialState``:
  ranks, backend) is left alone, so this is safe under ``accelerate launch`` too, where every rank
  does the same.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def no_accelerator() -> bool:
    """True when torch sees no CUDA, XPU or MPS device (then accelerate must be told ``cpu=True``)."""
    import torch

    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return not (
        torch.cuda.is_available()
        or (xpu is not None and xpu.is_available())
        or (mps is not None and mps.is_available())
    )


def partial_state():
    """``accelerate.PartialState`` (ranks and process group) for stages that need no model wrapping."""
    from accelerate import PartialState

    return PartialState(cpu=no_accelerator())


def make_accelerator(mixed_precision: str, **kwargs: Any):
    """``accelerate.Accelerator(mixed_precision=..., **kwargs)``, whatever the previous run used."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != mixed_precision:
        logger.debug(
            "resetting accelerate's state: mixed precision %s -> %s",
            state.get("_mixed_precision"),
            mixed_precision,
        )
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=no_accelerator(), **kwargs)
