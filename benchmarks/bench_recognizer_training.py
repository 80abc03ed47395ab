"""Recognizer training throughput: the input path alone, the model alone, and both, in images/s.

All three use the trainer's own code, so the figures say what the trainer does:

- loader alone: the trainer's input path (``ShardDataset`` -> DataLoader workers -> ``exact_batches``
  -> ``batch_to_device``: copy, decoding on the device with ``--decode device``, float conversion),
  no model; on CUDA it waits for the device at the end of the timed batches. On datasets whose
  per-worker share fits the shuffle buffer it times one whole epoch from the loader's start (the
  decoding all happens before the first batch), else a window in steady state;
- model alone: ``train_recognizer`` with ``model_only`` (the first batch kept on the device and trained on
  at every step: the step's own cost, loss logging and its device sync included);
- both: ``train_recognizer`` as a user runs it.

The trainer figures are taken from its per-step log after ``--warmup`` steps. ``both / model alone``
near 1 means training is limited by the model (the GPU), not by the input; ``loader alone`` says how
much headroom the input path has. The trainer starts new DataLoader workers at every epoch (so each
epoch reshuffles): with few steps per epoch that start-up is part of "both".

    OMP_NUM_THREADS=1 python -m facesynth.benchmarks.bench_recognizer_training   # JPEG procedural faces, tiny
    python -m facesynth.benchmarks.bench_recognizer_training --data runs/param5k --backbone r50 \\
        --batch-size 128 --precision bf16 --decode device --workers 12 --steps 40
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def make_dataset(folder: Path, identities: int, per_identity: int, image_format: str = "jpeg") -> Path:
    """Procedural faces in four shards (row groups of 64), encoded as ``image_format``."""
    from facesynth.core.manifest import write_shard_dataset
    from facesynth.core.shard_format import ShardRow, encode_image
    from facesynth.generators.registry import SampleRequest, build_generator

    generator = build_generator("parametric", num_identities=identities, seed=0)
    rows = []
    for label in range(identities):
        faces = generator.generate([SampleRequest(label, i, label * 1000 + i) for i in range(per_identity)])
        rows += [
            ShardRow(image=encode_image(f.image, image_format), label=label, identity=f"p{label}", index=i)
            for i, f in enumerate(faces)
        ]
    num_shards = 4
    per_shard = -(-len(rows) // num_shards)
    parts = [rows[s * per_shard : (s + 1) * per_shard] for s in range(num_shards)]
    write_shard_dataset(folder, parts, row_group_size=64)  # with its manifest: readers refuse a plain folder
    return folder


def loader_alone(
    data: str,
    *,
    batch_size: int,
    workers: int,
    decode: str,
    warmup: int,
    steps: int,
    device: torch.device,
    buffer_size: int = 1000,
) -> tuple[float, str]:
    """Images/s of the trainer's input path, batches ready on ``device``, no model; and what was timed.

    Each worker fills a shuffle buffer (``buffer_size`` rows; the trainer's default 1,000) before its first batch. When
    a worker's share of the epoch fits in it, the decoding happens before any batch arrives, so a window
    of later batches would time no decoding: the whole epoch is timed from the loader's start instead
    (worker start-up included, as the trainer pays it every epoch). Otherwise ``steps`` batches are timed
    once every worker delivers (steady state).
    """
    from facesynth.core.training_run import exact_batches
    from facesynth.recognizers.input_pipeline import batch_to_device, make_loader, shard_dataset
    from facesynth.recognizers.trainer import resolve_sources

    sources, offsets, _ = resolve_sources([data])
    dataset = shard_dataset(sources, decode, seed=0, buffer_size=buffer_size, label_offsets=offsets)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def epoch_batches(epoch: int):
        dataset.set_epoch(epoch)
        loader = make_loader(dataset, batch_size=batch_size, num_workers=workers, device=device, seed=epoch)
        return exact_batches(loader, batch_size)

    warm = epoch_batches(0)  # CUDA context, decoder set-up, page cache
    for _ in range(warmup):
        batch_to_device(next(warm), device)
    warm.close()
    sync()
    if dataset.rows_per_rank() / max(1, workers) <= buffer_size:
        start, count = time.perf_counter(), 0
        for batch in epoch_batches(1):
            batch_to_device(batch, device)
            count += batch_size
        sync()
        return count / (time.perf_counter() - start), f"one whole epoch ({count} images) from its start"
    stream = itertools.chain.from_iterable(epoch_batches(e) for e in itertools.count(1))
    for _ in range(max(warmup, 3 * max(1, workers))):  # every worker's buffer full, its queue drained
        batch_to_device(next(stream), device)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        batch_to_device(next(stream), device)
    sync()
    return steps * batch_size / (time.perf_counter() - start), f"{steps} batches in steady state"


def trainer_rate(run_dir: Path, warmup: int) -> float:
    """Images/s over the logged steps after ``warmup`` (each row is one step's window rate)."""
    with (run_dir / "train_log.csv").open(newline="") as handle:
        rates = [float(row["images_per_s"]) for row in csv.DictReader(handle)][warmup:]
    return len(rates) / sum(1.0 / r for r in rates)  # harmonic mean: total images / total time


def train_rate(
    data: str, out: Path, args: argparse.Namespace, decode: str, workers: int, model_only: bool
) -> float:
    """Images/s of ``train_recognizer`` (``model_only``: the model alone) after the warm-up steps."""
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    config = RecognizerTrainConfig(
        data=[data],
        output_dir=str(out),
        backbone=args.backbone,
        input_size=args.input_size,
        batch_size=args.batch_size,
        buffer_size=args.buffer_size,
        max_steps=args.warmup + args.steps,
        mixed_precision=args.precision,
        decode=decode,
        num_workers=workers,
        channels_last=args.channels_last,
        model_only=model_only,
        log_every=1,
        checkpoint_every=0,
        progress=False,
        tensorboard=False,
        export_onnx=False,
    )
    train_recognizer(config)
    return trainer_rate(out, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="shard folder (default: make JPEG faces)")
    parser.add_argument("--identities", type=int, default=32)
    parser.add_argument("--per-identity", type=int, default=24)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--input-size", type=int, default=None, help="default: the backbone's (112)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument(
        "--decode", choices=["workers", "device"], nargs="+", default=["workers"], help="one or both modes"
    )
    parser.add_argument("--workers", type=int, default=None, help="default: the trainer's (2 on CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--buffer-size", type=int, default=1000, help="shuffle buffer rows per worker")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=12, help="timed steps")
    parser.add_argument("--json", action="store_true", help="also print one JSON line per decode mode")
    args = parser.parse_args()

    from facesynth.core.errors import ConfigError
    from facesynth.recognizers.input_pipeline import check_device_decoding, default_num_workers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.workers if args.workers is not None else default_num_workers(device)
    print(
        f"{args.backbone}, batch {args.batch_size}, precision {args.precision}, {workers} worker(s), "
        f"channels_last {args.channels_last}, device {device}, torch threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = str(args.data or make_dataset(Path(tmp) / "faces", args.identities, args.per_identity))
        # the model alone does not depend on where images are decoded: measured once
        model = train_rate(data, Path(tmp) / "model", args, "workers", workers, model_only=True)
        print(f"model alone          : {model:9.1f} images/s")
        for decode in args.decode:
            record = {
                "backbone": args.backbone,
                "batch_size": args.batch_size,
                "precision": args.precision,
                "decode": decode,
                "workers": workers,
                "device": str(device),
                "model_images_per_s": round(model, 1),
            }
            try:
                if decode == "device":
                    check_device_decoding([data])
            except ConfigError as exc:
                print(f"decode {decode:<7}: skipped ({exc})")
                record["skipped"] = str(exc)
            else:
                loader, timed = loader_alone(
                    data,
                    batch_size=args.batch_size,
                    workers=workers,
                    decode=decode,
                    warmup=args.warmup,
                    steps=args.steps,
                    device=device,
                    buffer_size=args.buffer_size,
                )
                both = train_rate(data, Path(tmp) / f"both-{decode}", args, decode, workers, model_only=False)
                print(f"decode {decode:<7} loader alone: {loader:9.1f} images/s ({timed})")
                print(f"decode {decode:<7} both        : {both:9.1f} images/s")
                print(
                    f"decode {decode:<7} both / model alone: {both / model:.3f}  (1.0: the model is the limit)"
                )
                record.update(
                    loader_images_per_s=round(loader, 1),
                    loader_timed=timed,
                    both_images_per_s=round(both, 1),
                    both_over_model=round(both / model, 3),
                )
            if args.json:
                print(json.dumps(record))


if __name__ == "__main__":
    main()
