"""Recognizer training throughput: streaming from shards vs from in-memory tensors, same model, same run.

Both loops run the trainer's own step (augment -> method -> Partial FC -> backward -> clip -> SGD) on
the same model; only the batch source differs. Streaming uses the trainer's data path
(``ShardDataset`` -> ``DataLoader`` workers -> ``exact_batches``), decoding PNGs on the fly; the
baseline indexes a tensor of already-decoded images. The printed ratio (target >= 0.9 on CPU) says
how much the data path costs. The two loops alternate (A B A B ...) so that load from other programs
hits both alike. The trainer starts fresh DataLoader workers every epoch (so each epoch reshuffles), and
that start-up is part of the streaming cost: on tiny datasets (a few steps per epoch) it dominates.

    python -m facesynth.benchmarks.bench_recognizer_training            # procedural faces, tiny backbone
    python -m facesynth.benchmarks.bench_recognizer_training --data runs/param100 --backbone r18
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def make_dataset(folder: Path, identities: int, per_identity: int) -> Path:
    from facesynth.core.manifest import write_shard_dataset as write_dataset
    from facesynth.core.shard_format import ShardRow
    from facesynth.generators.registry import SampleRequest, build_generator

    generator = build_generator("parametric", num_identities=identities, seed=0)
    rows = []
    for label in range(identities):
        faces = generator.generate([SampleRequest(label, i, label * 1000 + i) for i in range(per_identity)])
        rows += [
            ShardRow(image=f.image, label=label, identity=f"p{label}", index=i) for i, f in enumerate(faces)
        ]
    num_shards = 4
    per_shard = -(-len(rows) // num_shards)
    parts = [rows[s * per_shard : (s + 1) * per_shard] for s in range(num_shards)]
    write_dataset(folder, parts, row_group_size=64)  # with its manifest: readers refuse a plain folder
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="shard folder (default: make procedural faces)"
    )
    parser.add_argument("--identities", type=int, default=32)
    parser.add_argument("--per-identity", type=int, default=24)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--input-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round and source")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for streaming")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from torch.utils.data import DataLoader

    from facesynth.core.shard_reader import ShardDataset
    from facesynth.recognizers.heads import build_head
    from facesynth.recognizers.methods import build_method
    from facesynth.recognizers.partial_fc import PartialFC
    from facesynth.recognizers.trainer import augment, exact_batches, resolve_sources

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_dataset(Path(tmp) / "faces", args.identities, args.per_identity)
        sources, offsets, num_classes = resolve_sources([str(data)])
        torch.manual_seed(0)
        size = (args.input_size, args.input_size)
        method = build_method("plain", args.backbone, {"input_size": list(size)})
        pfc = PartialFC(build_head("arcface"), method.embedding_size, num_classes)
        params = [p for p in method.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD([*params, pfc.weight], lr=0.01, momentum=0.9, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(0)

        def step(batch: dict[str, torch.Tensor]) -> None:
            images = augment(batch["image"], size, True, generator)
            embeddings, aux = method(images, batch["label"])
            loss = pfc(embeddings, batch["label"]) + sum(aux.values())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # in-memory baseline: every image decoded once up front
        everything = list(ShardDataset(sources, shuffle=False, label_offsets=offsets))
        images = torch.stack([row["image"] for row in everything])
        labels = torch.stack([row["label"] for row in everything])

        def memory_batches() -> Iterator[dict[str, torch.Tensor]]:
            while True:
                index = torch.randint(0, len(labels), (args.batch_size,), generator=generator)
                yield {"image": images[index], "label": labels[index]}

        dataset = ShardDataset(sources, seed=0, buffer_size=256, label_offsets=offsets)

        def stream_batches() -> Iterator[dict[str, torch.Tensor]]:
            epoch = 0
            while True:
                dataset.set_epoch(epoch)
                loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
                yield from exact_batches(loader, args.batch_size)
                epoch += 1

        method.train()
        sources_by_name = {"memory": memory_batches(), "stream": stream_batches()}
        for batches in sources_by_name.values():  # warm-up: first DataLoader start, allocator, kernels
            for _ in range(2):
                step(next(batches))
        seconds = {"memory": 0.0, "stream": 0.0}
        for _ in range(args.rounds):
            for name, batches in sources_by_name.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(next(batches))
                seconds[name] += time.perf_counter() - start
        count = args.rounds * args.steps * args.batch_size
        rate = {name: count / s for name, s in seconds.items()}
        print(
            f"backbone {args.backbone} @ {args.input_size}px, batch {args.batch_size}, {num_classes} classes, "
            f"{len(labels)} images, {args.workers} worker(s), {args.threads} thread(s)"
        )
        print(f"in-memory tensors : {rate['memory']:.1f} images/s")
        print(f"streaming shards  : {rate['stream']:.1f} images/s")
        print(f"ratio stream/memory: {rate['stream'] / rate['memory']:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
