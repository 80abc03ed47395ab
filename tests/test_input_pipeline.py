"""The recognizer trainer's input path: worker vs device decoding, padded byte batches, pinned re-cuts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from facesynth.core.errors import ConfigError, ShardError
from facesynth.core.manifest import write_shard_dataset
from facesynth.core.shard_format import ShardRow, decode_image, encode_image
from facesynth.core.shard_reader import ShardDataset, dataset_files
from facesynth.core.training_run import exact_batches
from facesynth.recognizers import input_pipeline
from facesynth.recognizers.input_pipeline import (
    batch_to_device,
    check_device_decoding,
    collate_rows,
    default_num_workers,
    shard_dataset,
)
from facesynth.recognizers.trainer import train_recognizer
from facesynth.tests.recognizer_tiny import small_config


def textured_rows(count: int, size: int, image_format: str, classes: int = 4) -> list[ShardRow]:
    """Smooth random colour images (JPEG-friendly, not flat), encoded as ``image_format``."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.float32)
        image = np.kron(coarse, np.ones((8, 8, 1), np.float32))
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
        data = encode_image(image, image_format, quality=90)
        rows.append(ShardRow(image=data, label=i % classes, identity=f"id{i % classes}", index=i))
    return rows


@pytest.fixture(scope="module")
def jpeg_faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jpeg")
    rows = textured_rows(48, 48, "jpeg")
    write_shard_dataset(folder, [rows[:24], rows[24:]], row_group_size=8)
    return folder


@pytest.fixture(scope="module")
def png_faces(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("png")
    write_shard_dataset(folder, [textured_rows(8, 16, "png")], row_group_size=8)
    return folder


def pillow_decoder():
    """Stand-in for torchvision's batched decode_jpeg (Pillow, the worker path's decoder)."""

    def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return [
            torch.from_numpy(np.array(decode_image(bytes(t.numpy())))).permute(2, 0, 1).to(device)
            for t in data
        ]

    return decode


def torchvision_reason() -> str | None:
    try:
        import torchvision.io  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - absent, or built for another torch (e.g. CUDA wheel, CPU torch)
        return f"torchvision does not import here ({type(exc).__name__}: {str(exc)[:80]})"
    return None


def stored_bytes(folder: Path) -> list[bytes]:
    return [
        image["bytes"]
        for file in dataset_files(folder)
        for image in pq.read_table(file, columns=["image"])["image"].to_pylist()
    ]


def test_encoded_rows_collate_padded_and_recut_to_the_stored_bytes(jpeg_faces):
    dataset = shard_dataset([str(jpeg_faces)], "device", shuffle=False)
    loader = DataLoader(dataset, batch_size=5, collate_fn=collate_rows)  # 5-row batches re-cut into 8
    batches = list(exact_batches(loader, 8))
    assert len(batches) == 48 // 8
    assert all(b["image_bytes"].dtype == torch.uint8 and b["image_bytes"].shape[0] == 8 for b in batches)
    rows = [
        bytes(b["image_bytes"][i, :n].numpy())
        for b in batches
        for i, n in enumerate(b["image_length"].tolist())
    ]
    assert rows == stored_bytes(jpeg_faces)
    # the padding is zeros past each row's length
    first = batches[0]
    assert all(int(first["image_bytes"][i, n:].sum()) == 0 for i, n in enumerate(first["image_length"]))
    assert [int(x) for b in batches for x in b["label"]] == [i % 4 for i in range(48)]


def test_device_path_gives_the_worker_path_pixels_and_labels(jpeg_faces, monkeypatch):
    monkeypatch.setattr(input_pipeline, "jpeg_decoder", pillow_decoder)
    device = torch.device("cpu")
    out = {}
    for mode in ("workers", "device"):
        dataset = shard_dataset([str(jpeg_faces)], mode, seed=3, buffer_size=16)
        loader = DataLoader(dataset, batch_size=8, num_workers=2, collate_fn=collate_rows)
        out[mode] = [batch_to_device(b, device) for b in exact_batches(loader, 8)]
    assert len(out["device"]) == len(out["workers"]) == 6
    for worker, dev in zip(out["workers"], out["device"], strict=True):
        assert torch.equal(worker["label"], dev["label"])
        assert dev["image"].dtype == torch.float32 and dev["image"].shape == (8, 3, 48, 48)
        assert torch.equal(worker["image"], dev["image"])
    # and the worker path's uint8 pixels give exactly the old float path's values
    floats = list(ShardDataset([str(jpeg_faces)], shuffle=False))
    uint8 = exact_batches(DataLoader(shard_dataset([str(jpeg_faces)], "workers", shuffle=False), 48), 48)
    assert torch.equal(
        batch_to_device(next(uint8), device)["image"], torch.stack([r["image"] for r in floats])
    )


def test_torchvision_decode_jpeg_matches_pillow_within_decoder_tolerance(jpeg_faces):
    reason = torchvision_reason()
    if reason:
        pytest.skip(reason)
    dataset = shard_dataset([str(jpeg_faces)], "device", shuffle=False)
    batch = next(exact_batches(DataLoader(dataset, batch_size=48, collate_fn=collate_rows), 48))
    decoded = batch_to_device(batch, torch.device("cpu"))["image"]
    reference = torch.stack([r["image"] for r in ShardDataset([str(jpeg_faces)], shuffle=False)])
    levels = (decoded - reference).abs() * 127.5  # in 8-bit levels
    assert levels.max() <= 2.0 and levels.mean() <= 0.5  # libjpeg-turbo vs libjpeg-turbo: IDCT rounding


def test_device_decoding_refuses_png_and_names_the_fix(png_faces, monkeypatch):
    monkeypatch.setattr(input_pipeline, "jpeg_decoder", pillow_decoder)
    with pytest.raises(ConfigError, match="JPEG only.*decode: workers"):
        check_device_decoding([str(png_faces)])
    with pytest.raises(ShardError, match="not a JPEG.*decode: workers"):
        list(ShardDataset([str(png_faces)], image_output="encoded", shuffle=False))


def test_device_decoding_without_torchvision_names_the_gpu_extra(jpeg_faces):
    if torchvision_reason() is None:
        pytest.skip("torchvision imports here")
    with pytest.raises(ConfigError, match=r"facesynth\[gpu\]"):
        check_device_decoding([str(jpeg_faces)])


def test_exact_batches_passes_full_batches_on_without_copying_and_joins_padded_widths():
    full = {"image": torch.zeros(4, 3, 2, 2), "label": torch.arange(4)}
    (out,) = exact_batches([full], 4)
    assert out["image"].data_ptr() == full["image"].data_ptr()  # still the (pinned) loader tensor
    narrow = {"image_bytes": torch.full((3, 2), 7, dtype=torch.uint8), "image_length": torch.full((3,), 2)}
    wide = {"image_bytes": torch.full((3, 5), 9, dtype=torch.uint8), "image_length": torch.full((3,), 5)}
    (joined,) = exact_batches([narrow, wide], 6)
    assert joined["image_bytes"].shape == (6, 5)
    assert (
        joined["image_bytes"][0].tolist() == [7, 7, 0, 0, 0] and joined["image_bytes"][5].tolist() == [9] * 5
    )


def test_default_workers_use_the_cores_on_cuda_only(monkeypatch):
    assert default_num_workers(torch.device("cpu")) == 2
    monkeypatch.setattr(input_pipeline.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers(torch.device("cuda"), processes_per_node=1) == 12
    assert default_num_workers(torch.device("cuda"), processes_per_node=8) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_num_workers(torch.device("cuda")) == 3


def read_losses(run: Path) -> list[float]:
    with (run / "train_log.csv").open(newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def test_trainer_device_decoding_and_channels_last_train_like_worker_decoding(
    jpeg_faces, tmp_path, monkeypatch
):
    torch.set_num_threads(1)
    monkeypatch.setattr(input_pipeline, "jpeg_decoder", pillow_decoder)
    common = dict(max_steps=3, export_onnx=False, checkpoint_every=0, buffer_size=16)
    train_recognizer(small_config([jpeg_faces], tmp_path / "workers", **common))
    train_recognizer(
        small_config([jpeg_faces], tmp_path / "device", decode="device", channels_last=True, **common)
    )
    workers, device = read_losses(tmp_path / "workers"), read_losses(tmp_path / "device")
    assert len(workers) == len(device) == 3
    assert device == pytest.approx(workers, rel=1e-4)  # same pixels, same order; channels-last only reorders


def test_model_only_moves_one_batch_and_trains_on_it(jpeg_faces, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    moved = []
    real = input_pipeline.batch_to_device

    def counting(batch, device):
        moved.append(batch["label"].clone())
        return real(batch, device)

    monkeypatch.setattr("facesynth.recognizers.trainer.batch_to_device", counting)
    config = small_config(
        [jpeg_faces], tmp_path / "model", max_steps=4, model_only=True, export_onnx=False, checkpoint_every=0
    )
    result = train_recognizer(config)
    assert result.steps == 4 and len(moved) == 1


@pytest.mark.gpu
def test_cuda_decode_matches_pillow_within_nvjpeg_tolerance(jpeg_faces):
    """nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's: small, bounded differences."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = torchvision_reason()
    if reason:
        pytest.skip(reason)
    dataset = shard_dataset([str(jpeg_faces)], "device", shuffle=False)
    loader = DataLoader(dataset, batch_size=48, collate_fn=collate_rows, pin_memory=True)
    decoded = batch_to_device(next(exact_batches(loader, 48)), torch.device("cuda"))["image"].cpu()
    reference = torch.stack([r["image"] for r in ShardDataset([str(jpeg_faces)], shuffle=False)])
    levels = (decoded - reference).abs() * 127.5
    assert levels.mean() <= 2.0 and levels.max() <= 32.0, (float(levels.mean()), float(levels.max()))


@pytest.mark.gpu
@pytest.mark.parametrize("decode", ["workers", "device"])
def test_cuda_training_with_pinned_non_blocking_input(jpeg_faces, tmp_path, decode):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if decode == "device" and torchvision_reason():
        pytest.skip(torchvision_reason())
    common = dict(max_steps=3, export_onnx=False, checkpoint_every=0, buffer_size=16, num_workers=2)
    train_recognizer(small_config([jpeg_faces], tmp_path / "ref", mixed_precision="bf16", **common))
    train_recognizer(
        small_config(
            [jpeg_faces],
            tmp_path / decode,
            decode=decode,
            channels_last=True,
            mixed_precision="bf16",
            **common,
        )
    )
    reference, losses = read_losses(tmp_path / "ref"), read_losses(tmp_path / decode)
    assert len(losses) == 3 and losses == pytest.approx(reference, rel=0.05)


def test_bench_loader_alone_times_a_whole_epoch_when_the_buffers_hold_it(jpeg_faces):
    from facesynth.benchmarks.bench_recognizer_training import loader_alone

    common = dict(batch_size=8, workers=0, decode="workers", warmup=1, steps=2, device=torch.device("cpu"))
    rate, timed = loader_alone(str(jpeg_faces), **common)
    assert rate > 0 and timed == "one whole epoch (48 images) from its start"
    rate, timed = loader_alone(str(jpeg_faces), buffer_size=4, **common)
    assert rate > 0 and timed == "2 batches in steady state"
