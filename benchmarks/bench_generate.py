"""End-to-end ``generate`` throughput as a ratio of the bare renderer, timed in the same run.

    python -m facesynth.benchmarks.bench_generate [--images 2000] [--per-identity 20] [--image-format png] [--rounds 3]

(a) the parametric renderer alone: images/s of ``generator.generate`` over the same requests;
(b) ``generate_dataset`` writing real shards (encoding, Parquet, checksums, manifest) to a temp folder.
The target is (b)/(a) >= 0.9: encoding and writing hide behind generation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from facesynth.generators.registry import SampleRequest, build_generator, sample_seed
from facesynth.pipelines.generate import GenerateConfig, generate_dataset


def renderer_only(identities: int, per_identity: int, seed: int, batch_size: int) -> float:
    generator = build_generator("parametric", num_identities=identities, seed=seed)
    requests = [
        SampleRequest(label, index, sample_seed(seed, label, index))
        for label in range(identities)
        for index in range(per_identity)
    ]
    started = time.perf_counter()
    for start in range(0, len(requests), batch_size):
        generator.generate(requests[start : start + batch_size])
    return len(requests) / (time.perf_counter() - started)


def end_to_end(
    identities: int, per_identity: int, seed: int, image_format: str, out: Path, shards: int = 4
) -> float:
    config = GenerateConfig(
        generator="parametric",
        identities=identities,
        per_identity=per_identity,
        out=out,
        seed=seed,
        shard_size=max(per_identity, identities * per_identity // shards),
        image_format=image_format,
    )
    result = generate_dataset(config, show_progress=False)
    return result.images_written / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--per-identity", type=int, default=20)
    parser.add_argument("--image-format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shards",
        type=int,
        default=4,
        help="shards the dataset is cut into (default 4): the last shard's encoding and writing cannot "
        "overlap generation, a tail that a real dataset of many shards spreads thin",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="(a) then (b) this many times; the median ratio is reported"
    )
    args = parser.parse_args()
    identities = max(1, args.images // args.per_identity)
    generator = build_generator("parametric", num_identities=identities, seed=args.seed)
    bare, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: one-time imports (accelerate, datasets) and process-state creation are not throughput
        renderer_only(2, 4, args.seed, generator.batch_size)
        end_to_end(2, 4, args.seed, args.image_format, Path(tmp) / "warm-up")
        # interleaved rounds: a shared machine's speed drifts over seconds, so each (b) is compared
        # with the (a) timed just before it
        for round_ in range(args.rounds):
            bare.append(renderer_only(identities, args.per_identity, args.seed, generator.batch_size))
            out = Path(tmp) / f"ds-{round_}"
            full.append(
                end_to_end(identities, args.per_identity, args.seed, args.image_format, out, args.shards)
            )
    ratios = [b / a for a, b in zip(bare, full, strict=True)]
    print(
        f"images: {identities * args.per_identity} ({identities} identities x {args.per_identity}), "
        f"format {args.image_format}, {args.shards} shards, {args.rounds} interleaved rounds"
    )
    print(f"(a) parametric renderer alone : {statistics.median(bare):8.1f} img/s (median)")
    print(f"(b) facesynth generate (e2e)  : {statistics.median(full):8.1f} img/s (median)")
    print(f"ratio (b)/(a) per round       : {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"ratio (b)/(a), median         : {statistics.median(ratios):8.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
