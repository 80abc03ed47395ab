"""Benchmark: dataset-quality statistics on 10,000 identities x 50 images of 512-d embeddings.

Prints wall time and peak memory of :func:`facesynth.data_cards.quality_metrics.compute_quality`
(including the leakage check against ``--reference`` real centres), and ratios against two
baselines measured in the same run on the same data:

* time: one blockwise pass of the embeddings against the class centres (``N x C x D`` multiply-adds,
  the least any centre-based statistic must do), so the ratio says how many such passes the whole
  report costs;
* memory: the embedding matrix itself (``N x D`` float32), so the ratio says how much the
  statistics add on top of holding the data.

Peak memory is tracemalloc's peak (numpy buffers are traced) during the call, and the process's
``ru_maxrss`` after it. The CPU may be shared; the thread count is printed.

    python benchmarks/bench_quality.py                      # 10,000 x 50, 512-d, 10,000 real centres
    python benchmarks/bench_quality.py --identities 1000    # quick look
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np


def make_embeddings(identities: int, per_identity: int, dim: int, noise: float, seed: int):
    """Clustered random unit embeddings, built in blocks (no full-size temporaries)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(identities, dtype=np.int64), per_identity)
    emb = np.empty((labels.size, dim), dtype=np.float32)
    block = 50_000
    for start in range(0, labels.size, block):
        stop = min(start + block, labels.size)
        x = centres[labels[start:stop]] + (noise / np.sqrt(dim)) * rng.standard_normal(
            (stop - start, dim), dtype=np.float32
        )
        emb[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return emb, labels, centres


def baseline_pass(emb: np.ndarray, centres: np.ndarray, block: int = 4096) -> float:
    """Seconds for one blockwise N x C product with a row-wise max (the reference unit of work)."""
    start = time.perf_counter()
    for i in range(0, emb.shape[0], block):
        (emb[i : i + block] @ centres.T).max(axis=1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--identities", type=int, default=10_000)
    parser.add_argument("--per-identity", type=int, default=50)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--reference", type=int, default=10_000, help="real identity centres (0: no leakage check)"
    )
    parser.add_argument("--noise", type=float, default=0.8, help="isotropic noise norm per image")
    parser.add_argument("--impostor-pairs", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=0, help="torch/BLAS threads hint (0: leave as is)")
    args = parser.parse_args()

    import os

    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    from facesynth.data_cards.quality_metrics import QualitySettings, compute_quality

    emb, labels, centres = make_embeddings(args.identities, args.per_identity, args.dim, args.noise, seed=0)
    rng = np.random.default_rng(1)
    reference = None
    if args.reference:
        reference = rng.standard_normal((args.reference, args.dim), dtype=np.float32)
        reference /= np.linalg.norm(reference, axis=1, keepdims=True)
        reference[:10] = centres[:10]  # ten planted real identities: the check must flag them
    print(
        f"data: {args.identities:,} identities x {args.per_identity} images = {emb.shape[0]:,} x {args.dim}-d "
        f"({emb.nbytes / 2**20:.0f} MiB); reference centres: {args.reference:,}; cpu count {os.cpu_count()}"
    )
    compute_quality(emb[:2000], labels[:2000], settings=QualitySettings(impostor_pairs=1000))  # warm imports
    base = baseline_pass(emb, centres)
    print(f"baseline: one blockwise N x C pass: {base:.2f} s")

    tracemalloc.start()
    cpu_start = time.process_time()
    start = time.perf_counter()
    report = compute_quality(
        emb, labels, reference_centres=reference, settings=QualitySettings(impostor_pairs=args.impostor_pairs)
    )
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"compute_quality: {wall:.1f} s wall  ({wall / base:.1f}x the baseline pass); "
        f"{cpu:.1f} s process CPU time (all threads; on a shared machine wall >> CPU / threads)"
    )
    print(
        f"peak traced memory during the call: {peak / 2**20:.0f} MiB ({peak / emb.nbytes:.2f}x the embedding matrix); "
        f"process max RSS: {rss:.0f} MiB"
    )
    inter = report["inter_class"]
    print(
        f"check: uniqueness {inter['uniqueness']['share']:.4f}, EER {inter['eer']:.4f}, "
        f"C_intra {report['intra_class']['c_intra']:.4f}, genuine pairs {report['intra_class']['genuine']['count']:,}"
    )
    if report["leakage"]:
        print(f"check: flagged identities {report['leakage']['flagged_identities']} (10 planted)")


if __name__ == "__main__":
    main()
