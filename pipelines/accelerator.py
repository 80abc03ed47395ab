"""One Accelerator per training run, also when one process runs several (library use, experiments).

accelerate keeps its state (device, mixed precision) in process-wide singletons and refuses a second
``Accelerator`` whose ``mixed_precision`` differs from the first one's. A bf16 recognizer run followed
by an fp32 ID3 run in the same Python process is a normal thing to do with facesynth as a library,
so before each run the mixed-precision layer (``AcceleratorState``) is cleared when it disagrees;
the process-group layer (``PartialState``: ranks, backend) is left alone, so this is safe under
``accelerate launch`` too, where every rank does the same.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


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
    return Accelerator(mixed_precision=mixed_precision, **kwargs)
