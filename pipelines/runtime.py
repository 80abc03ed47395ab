"""Process settings every command shares: quiet third-party logging, and CPU thread counts.

Logging: third-party libraries report at INFO what a user cannot act on (accelerate's state lines
break progress bars; torch.onnx says "torchvision is not installed" once per skipped operator;
diffusers warns about an empty list of float32 modules). They are lowered to WARNING (``-v`` keeps
everything).

Threads: PyTorch starts one intra-op thread per core in every process, so several processes on one
machine (``torchrun``/``accelerate launch``), or one process on a busy machine, oversubscribe the
cores. Unless ``OMP_NUM_THREADS`` is set, each process gets ``cores // LOCAL_WORLD_SIZE`` threads
(cores = the CPUs this process may run on); DataLoader workers already run with one thread each.
"""

from __future__ import annotations

import logging
import os

NOISY_LOGGERS = (
    "accelerate",
    "torch.onnx",
    "onnx_ir",
    "onnxscript",
    "httpx",
    "urllib3",
    "huggingface_hub",
    "datasets",
)


class _DropMessages(logging.Filter):
    """Drops records containing any of ``needles`` (known-harmless third-party warnings)."""

    def __init__(self, *needles: str):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


def configure_logging(verbose: bool = False) -> None:
    """INFO for facesynth (DEBUG with ``verbose``), WARNING for chatty libraries."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose:
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch.onnx logs "torchvision is not installed. Skipping ..." at WARNING for every torchvision
    # operator it could register; facesynth's models use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # diffusers warns "modules ... should be kept in float32: []" even when the list is empty.
    logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropMessages("kept in float32: []"))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads(environ: dict[str, str] | None = None, cores: int | None = None) -> int | None:
    """Threads for this process: None when the user set ``OMP_NUM_THREADS``, else cores per local process."""
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS"):
        return None
    local_processes = max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = available_cores() if cores is None else cores
    return max(1, cores // local_processes)


def configure_threads() -> int | None:
    """Apply :func:`intra_op_threads` to torch (imported only when it is already loaded or needed)."""
    threads = intra_op_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads
