"""Tammes anchor solver: minimum angle against random placement, and time against one all-pairs pass.

Both baselines are measured in the same run: the random placement is the solver's own seeded start
(what the "ID3-random" ablation uses), and the time unit is one exact blockwise all-pairs
nearest-neighbour pass over the same N x D points (the cost of merely *checking* a placement).

    python -m facesynth.benchmarks.bench_tammes --n 10000 --dim 512
    python -m facesynth.benchmarks.bench_tammes --n 100000 --dim 512 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from facesynth.generators.tammes import nearest_neighbours, random_sphere_points, solve_tammes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="number of anchors (default 10000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding width (default 512)")
    parser.add_argument("--steps", type=int, default=300, help="solver steps (default 300, the generator's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    points = random_sphere_points(args.n, args.dim, args.seed).to(device)
    nearest_neighbours(points, 1)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    nearest_neighbours(points, 16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    pass_seconds = time.perf_counter() - started

    result = solve_tammes(args.n, args.dim, seed=args.seed, steps=args.steps, device=device, progress=True)
    gain = result.min_angle_deg - result.random_min_angle_deg
    print(f"N={args.n} D={args.dim} steps={args.steps} device={device} threads={args.threads}")
    print(f"random placement min angle : {result.random_min_angle_deg:8.3f} deg  (baseline)")
    print(f"Tammes solver min angle    : {result.min_angle_deg:8.3f} deg  (+{gain:.3f} deg)")
    print(
        f"max |cos| random -> Tammes : {torch.tensor(result.random_min_angle_deg).deg2rad().cos():.4f} -> "
        f"{torch.tensor(result.min_angle_deg).deg2rad().cos():.4f}"
    )
    print(f"one all-pairs pass         : {pass_seconds:8.2f} s  (baseline)")
    print(
        f"Tammes solve               : {result.seconds:8.2f} s  = {result.seconds / pass_seconds:.1f} x one pass"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "n": args.n,
                    "dim": args.dim,
                    "steps": args.steps,
                    "device": str(device),
                    "random_min_angle_deg": result.random_min_angle_deg,
                    "tammes_min_angle_deg": result.min_angle_deg,
                    "solve_seconds": result.seconds,
                    "all_pairs_pass_seconds": pass_seconds,
                    "history": result.history,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
