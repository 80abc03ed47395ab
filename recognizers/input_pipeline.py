"""The recognizer trainer's input path: shards -> DataLoader workers -> device-ready image batches.

Two places can decode the stored JPEG/PNG images (the trainer's ``decode`` option):

- ``"workers"`` (default): each DataLoader worker decodes with Pillow and sends uint8 pixels (a quarter
  of the bytes float32 would take through shared memory, pinning and the host-to-device copy); the
  training device turns them into float in [-1, 1]. Works for every image format and on every device.
- ``"device"``: workers only read the Parquet rows and send the encoded JPEG bytes (zero-padded into a
  (B, L) uint8 tensor plus each row's length); the batch is decoded on the training device in one call
  of ``torchvision.io.decode_jpeg(list, device=...)`` (batched nvJPEG on CUDA, torchvision >= 0.19;
  the ``gpu`` extra installs it). JPEG only: a PNG row is refused with the fix named.

On CUDA, batches arrive in pinned memory (the DataLoader's ``pin_memory``) and are copied with
``non_blocking=True``; :func:`~facesynth.core.training_run.exact_batches` keeps them pinned (it re-cuts worker batches without copying
a batch that already has the right size).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, default_collate

from facesynth.core.errors import ConfigError, ShardError
from facesynth.core.shard_reader import JPEG_MAGIC, ShardDataset, dataset_files

logger = logging.getLogger(__name__)

DecodeMode = Literal["workers", "device"]

#: the extra to install for ``decode: device``
GPU_EXTRA_HINT = "pip install 'facesynth[gpu]' (torchvision >= 0.19 built for the installed torch)"


def default_num_workers(device: torch.device, processes_per_node: int | None = None) -> int:
    """DataLoader workers per training process when the config leaves ``num_workers`` unset.

    On CUDA: the node's CPU cores shared by its training processes, one core left to each process
    itself, at most 12 (enough to decode > 5,000 112x112 JPEGs/s with Pillow); on CPU: 2, since the
    training process needs the cores for the model.
    """
    if device.type != "cuda":
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = processes_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(12, cores // max(1, local) - 1))


def shard_dataset(sources: Sequence[str], decode: DecodeMode, **kwargs: Any) -> ShardDataset:
    """The trainer's :class:`ShardDataset`: uint8 pixels (``workers``) or encoded JPEGs (``device``)."""
    return ShardDataset(sources, image_output="encoded" if decode == "device" else "uint8", **kwargs)


def collate_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, except encoded images: zero-padded to the batch's longest as (B, L) uint8,
    with ``image_length`` (B,) holding each row's byte count."""
    if not rows or "image_bytes" not in rows[0]:
        return default_collate(rows)
    encoded = [row["image_bytes"] for row in rows]
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.int64)
    padded = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.uint8)
    for i, data in enumerate(encoded):
        padded[i, : len(data)] = data
    batch = default_collate([{k: v for k, v in row.items() if k != "image_bytes"} for row in rows])
    batch["image_bytes"], batch["image_length"] = padded, lengths
    return batch


def make_loader(
    dataset: ShardDataset,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    seed: int,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """One epoch's DataLoader (pinned batches on CUDA).

    The trainer makes a new loader per epoch because the workers hold their own copy of the dataset,
    whose epoch sets the shuffle; ``persistent_workers`` would keep the old epoch's order, so it is off.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_rows,
        pin_memory=device.type == "cuda",
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


JpegDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def _torchvision_decoder() -> JpegDecoder:
    """``torchvision.io.decode_jpeg`` as a (list of 1-D uint8 tensors, device) -> list of (3,H,W) uint8."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # noqa: BLE001 - ImportError, or a torchvision built for another torch
        raise ConfigError(
            f"field 'decode': 'device' needs torchvision ({type(exc).__name__}: {exc}); {GPU_EXTRA_HINT}, "
            "or use decode: workers"
        ) from None

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))

    return decode


#: the batched JPEG decoder of ``decode: device`` (tests may swap in a stand-in where torchvision is absent)
jpeg_decoder: Callable[[], JpegDecoder] = _torchvision_decoder


def check_device_decoding(sources: Sequence[str], allow_plain: bool = False) -> None:
    """Fail early, naming the fix, when ``decode: device`` cannot work: no torchvision, or not JPEG."""
    jpeg_decoder()
    for source in sources:
        files = dataset_files(source, allow_plain=allow_plain)
        if not files:
            continue
        table = next(pq.ParquetFile(files[0]).iter_batches(batch_size=1, columns=["image"]), None)
        if table is None or table.num_rows == 0:
            continue
        data = table.column("image")[0].as_py()["bytes"]
        if not data.startswith(JPEG_MAGIC):
            raise ConfigError(
                f"field 'decode': 'device' decodes JPEG only, and {files[0]} holds another format; use "
                "decode: workers, or write the shards with --image-format jpeg"
            )


def decode_on_device(encoded: torch.Tensor, lengths: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, L) padded JPEG bytes + (B,) lengths -> (B, 3, H, W) uint8 on ``device``, decoded in one call."""
    data = [encoded[i, :n] for i, n in enumerate(lengths.tolist())]
    try:
        images = jpeg_decoder()(data, device)
    except RuntimeError as exc:
        raise ShardError(
            f"a JPEG in this batch does not decode on {device} ({exc}); `facesynth verify` finds it, and "
            "decode: workers skips undecodable images"
        ) from None
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        raise ShardError(f"images of different sizes {shapes[:3]} in one batch; run `facesynth verify`")
    return torch.stack(images)


def batch_to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a loader batch to ``device`` (non-blocking from pinned memory on CUDA) and give it ``image``:
    float32 (B, 3, H, W) in [-1, 1], decoded on the device when the batch holds encoded JPEGs."""
    non_blocking = device.type == "cuda"
    skip = ("image", "image_bytes", "image_length")
    out = {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items() if k not in skip}
    if "image_bytes" in batch:
        pixels = decode_on_device(batch["image_bytes"], batch["image_length"], device)
    else:
        pixels = batch["image"].to(device, non_blocking=non_blocking)
    # the same arithmetic as shard_reader.image_to_tensor, so both paths give the same floats
    out["image"] = pixels.float().div_(127.5).sub_(1.0) if pixels.dtype == torch.uint8 else pixels
    return out
