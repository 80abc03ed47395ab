"""Embedding throughput: torch backbone vs the same backbone exported to ONNX and run by onnxruntime.

    python -m facesynth.benchmarks.bench_encoders [--backbone r18] [--batch-size 32] [--batches 5]
        [--threads 2] [--device cpu|cuda]

Both run the same randomly initialised weights on the same batches (timing does not depend on the
weights); the first batch of each is a warm-up and is not timed. Prints images/s of each, the ratio
onnxruntime / torch, and the largest difference between their L2-normalised embeddings. On ``cuda``
onnxruntime needs the CUDA provider (onnxruntime-gpu); without it the script says so and stops.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facesynth.recognizers.backbones import build_backbone
from facesynth.recognizers.encoders import OnnxEncoder, TorchEncoder
from facesynth.recognizers.onnx_export import export_onnx


def images_per_second(encoder, batch: torch.Tensor, batches: int) -> tuple[float, np.ndarray]:
    with torch.inference_mode():
        out = encoder.embed(batch)  # warm-up
        if batch.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(batches):
            out = encoder.embed(batch)
        if isinstance(out, torch.Tensor) and out.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return batches * batch.shape[0] / elapsed, out.float().cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="r18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both runtimes")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_backbone(args.backbone).eval()
    batch = torch.rand(args.batch_size, 3, 112, 112) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / f"{args.backbone}.onnx")
        ort_encoder = OnnxEncoder(path, device=args.device, threads=args.threads)
        if args.device == "cuda" and "CUDAExecutionProvider" not in ort_encoder.session.get_providers():
            raise SystemExit("onnxruntime did not start the CUDA provider; install onnxruntime-gpu")
        torch_encoder = TorchEncoder(model, device=args.device)
        torch_rate, torch_emb = images_per_second(torch_encoder, batch.to(args.device), args.batches)
        ort_rate, ort_emb = images_per_second(ort_encoder, batch, args.batches)
    print(
        f"backbone {args.backbone}, batch {args.batch_size} x {args.batches}, device {args.device}, threads {args.threads}"
    )
    print(f"torch       : {torch_rate:8.1f} images/s")
    print(f"onnxruntime : {ort_rate:8.1f} images/s")
    print(f"ratio onnxruntime / torch: {ort_rate / torch_rate:.2f}")
    print(f"max |embedding difference| (L2-normalised): {np.abs(torch_emb - ort_emb).max():.2e}")


if __name__ == "__main__":
    main()
