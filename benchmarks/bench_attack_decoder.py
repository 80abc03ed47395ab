"""When does the recovery decoder stop improving? Its victims' PSNR against training steps, RGB row.

The attack decoder (:func:`facesynth.privacy.attacks.train_decoder`) is trained on the unprotected
RGB row (view = the image itself, where a perfect recovery exists), on parametric faces: public
identities for training, disjoint victim identities for the PSNR, measured every ``--eval-every``
steps. One run per decoder width and learning-rate schedule; the printed table is what the
defaults of :class:`~facesynth.privacy.attacks.DecoderConfig` were chosen from (the step where the
gain falls under ``--plateau-db`` per 100 steps).

    python -m facesynth.benchmarks.bench_attack_decoder --size 56 --steps 600 --threads 1

Measured (2026-11-30, shared 2-core box, one thread; 32 x 32 faces, widths 16/32/64):
``--size 32 --steps 1500 --eval-every 100 --widths 16,32,64 --schedules cosine --lr 2e-3``: PSNR
19.9 dB at step 100, 30.1 at 500, 32.0 at 1100, 32.1 at 1200-1500 (gain < 0.1 dB / 100 steps from
step 1100), 932 s; ``--steps 500 --eval-every 50 --schedules constant --lr 1e-3`` (the old recipe):
28.7 dB at step 500, still gaining about 0.8 dB per 50 steps, 573 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def _faces(first: int, count: int, per_id: int, size: int, seed: int) -> torch.Tensor:
    from facesynth.generators.registry import SampleRequest, build_generator, sample_seed

    gen = build_generator("parametric", num_identities=first + count, seed=seed)
    requests = [
        SampleRequest(label, i, sample_seed(seed, label, i))
        for label in range(first, first + count)
        for i in range(per_id)
    ]
    x = torch.from_numpy(np.stack([f.image for f in gen.generate(requests)])).permute(0, 3, 1, 2).float()
    x = x / 127.5 - 1
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def plateau_step(curve: list[tuple[int, float]], per_100_db: float) -> int:
    """First measured step after which the PSNR gains less than ``per_100_db`` per 100 steps."""
    for (s0, p0), (s1, p1) in zip(curve, curve[1:], strict=False):
        if (p1 - p0) * 100 / max(1, s1 - s0) < per_100_db:
            return s0
    return curve[-1][0]


def run(widths, schedule: str, public, victims, args) -> list[tuple[int, float]]:
    from facesynth.privacy.attacks import DecoderConfig, decode, psnr, train_decoder

    config = DecoderConfig(
        block_out_channels=tuple(widths),
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        lr_schedule=schedule,
        warmup_steps=args.warmup,
        seed=args.seed,
    )
    g = torch.Generator().manual_seed(args.seed)

    def pairs():
        order = torch.randperm(public.shape[0], generator=g)
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[start : start + args.batch_size]
            yield public[idx], public[idx]

    curve: list[tuple[int, float]] = []

    def on_step(step: int, decoder) -> None:
        if step % args.eval_every == 0 or step == args.steps:
            decoder.eval()
            rec = torch.cat(
                [decode(decoder, victims[i : i + 64], victims.shape[-2:]) for i in range(0, len(victims), 64)]
            )
            decoder.train()
            curve.append((step, float(psnr(rec, victims).mean())))

    train_decoder(pairs, 3, config, progress=False, on_step=on_step)
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=56, help="face side (112 = the table's size)")
    parser.add_argument("--public-ids", type=int, default=24)
    parser.add_argument("--victim-ids", type=int, default=8)
    parser.add_argument("--per-identity", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--widths", nargs="+", default=["16,32,64", "32,64,128,256"])
    parser.add_argument("--schedules", nargs="+", default=["constant", "cosine"])
    parser.add_argument("--plateau-db", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the curves here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    public = _faces(0, args.public_ids, args.per_identity, args.size, args.seed)
    victims = _faces(args.public_ids, args.victim_ids, args.per_identity, args.size, args.seed)
    results = {}
    for widths in args.widths:
        for schedule in args.schedules:
            start = time.perf_counter()
            curve = run([int(w) for w in widths.split(",")], schedule, public, victims, args)
            key = f"widths {widths} {schedule}"
            results[key] = {
                "curve": curve,
                "final_psnr": curve[-1][1],
                "plateau_step": plateau_step(curve, args.plateau_db),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(
                f"{key}: final PSNR {curve[-1][1]:.2f} dB, gain < {args.plateau_db} dB/100 steps from step "
                f"{results[key]['plateau_step']}, {results[key]['seconds']} s; curve "
                + " ".join(f"{s}:{p:.1f}" for s, p in curve),
                flush=True,
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
