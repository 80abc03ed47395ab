"""Frequency frontend throughput against the straightforward form of the same numerics, in one run.

Baseline: :func:`facesynth.privacy.frequency_frontend.reference_block_dct` (bilinear x8 upsample with
``align_corners=True`` to 896 x 896, JPEG YCbCr at 896, -128, ``F.unfold`` into 8x8 blocks, one 64 x 64
DCT matmul) - the TFace computation. Candidate: :class:`FrequencyFrontend` (banded separable form,
no 896 x 896 image). Both run on the same inputs, alternating, best of ``--repeats``.

Printed: images/s of each (wall clock) and their ratio, the same from process CPU time (robust when
the machine is shared: other processes' load does not count), and the max abs difference between the
two outputs, with both compared to a float64 evaluation so the difference can be read as float32
rounding. ``--mode fast`` times the optional align_corners=False convolution frontend as well.

    python benchmarks/bench_frequency_frontend.py --batch 16 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from facesynth.privacy.frequency_frontend import FrequencyFrontend, reference_block_dct


def _time(fn, x: torch.Tensor, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(best wall seconds, best CPU seconds, output)."""
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = fn(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        best_wall = min(best_wall, time.perf_counter() - wall0)
        best_cpu = min(best_cpu, time.process_time() - cpu0)
    return best_wall, best_cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fast", action="store_true", help="also time mode='fast' (different numerics)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, 3, 112, 112, generator=gen) * 2 - 1).to(device)
    frontend = FrequencyFrontend().to(device)

    with torch.no_grad():
        frontend(x[:1])  # warm-up (operator construction, allocator)
        reference_block_dct(x[:1])
        results = {}
        for _ in range(2):  # alternate so drifting machine load hits both
            for name, fn in (("reference", reference_block_dct), ("frontend", frontend)):
                wall, cpu, out = _time(fn, x, args.repeats)
                prev = results.get(name, (float("inf"), float("inf"), None))
                results[name] = (min(wall, prev[0]), min(cpu, prev[1]), out)
        exact = FrequencyFrontend().double().to(device)(x[:2].double())
    ref_wall, ref_cpu, ref_out = results["reference"]
    fe_wall, fe_cpu, fe_out = results["frontend"]
    n = args.batch
    print(f"device={device} threads={args.threads} batch={n} repeats={args.repeats}")
    print(
        f"reference (upsample + unfold + matmul): {n / ref_wall:8.1f} images/s wall, {n / ref_cpu:8.1f} per CPU-s"
    )
    print(
        f"frontend (banded separable)           : {n / fe_wall:8.1f} images/s wall, {n / fe_cpu:8.1f} per CPU-s"
    )
    print(f"ratio frontend / reference: {ref_wall / fe_wall:.2f}x wall, {ref_cpu / fe_cpu:.2f}x CPU time")
    diff = (fe_out - ref_out).abs().max().item()
    scale = ref_out.abs().max().item()
    print(
        f"max |frontend - reference| = {diff:.3e} (max |coefficient| {scale:.1f}, relative {diff / scale:.2e})"
    )
    ref_err = (ref_out[:2].double() - exact).abs().max().item()
    fe_err = (fe_out[:2].double() - exact).abs().max().item()
    print(f"vs float64 evaluation: reference {ref_err:.3e}, frontend {fe_err:.3e}")
    if args.fast:
        fast = FrequencyFrontend(mode="fast").to(device)
        with torch.no_grad():
            fast(x[:1])
            wall, cpu, _ = _time(fast, x, args.repeats)
        print(f"mode='fast' (align_corners=False conv, other numerics): {n / wall:8.1f} images/s wall")


if __name__ == "__main__":
    main()
