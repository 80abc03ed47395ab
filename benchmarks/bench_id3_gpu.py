"""ID3 on a GPU: training steps/s and sampling images/s at 112x112 in bf16.

Training: the trainer's step (condition encoder + UNet forward, ID-preserving loss with the identity
term through a frozen IResNet, backward, AdamW) under ``torch.autocast(bf16)``, timed over
``--train-steps`` after warm-up; the baseline timed in the same run is the same step without the
identity term (``lambda_id = 0``), so the printed ratio is the identity term's training cost.
Sampling: ``benchmarks/bench_id3_sampling.py`` with the same model (pipeline vs bare loop, kappa cost).
Encoder weights are random: only speed is measured.

    python -m facesynth.benchmarks.bench_id3_gpu                      # needs CUDA
    python -m facesynth.benchmarks.bench_id3_gpu --device cpu --preset tiny --size 16 --batch 2 \\
        --train-steps 2 --sample-batch 2 --sample-steps 2            # smoke run without a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from facesynth.benchmarks.bench_id3_sampling import main as sampling_main


def train_rate(args: argparse.Namespace, lambda_id: float) -> float:
    """Optimizer steps per second of the ID3 training step."""
    from diffusers import DDPMScheduler

    from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
    from facesynth.generators.id3_loss import ID3LossConfig, id3_loss
    from facesynth.generators.id3_unet import build_id3_unet
    from facesynth.recognizers.backbones import build_backbone
    from facesynth.recognizers.encoders import TorchEncoder

    device = torch.device(args.device)
    torch.manual_seed(0)
    unet = build_id3_unet(args.preset, args.size).to(device)
    cond = ID3ConditionEncoder(embedding_dim=512).to(device)
    backbone = build_backbone(args.encoder, num_features=512).to(device).requires_grad_(False)
    encoder = TorchEncoder(backbone, description=args.encoder)
    scheduler = DDPMScheduler()
    abar = scheduler.alphas_cumprod.to(device)
    optimizer = torch.optim.AdamW([*unet.parameters(), *cond.parameters()], lr=1e-4)
    config = ID3LossConfig(lambda_id=lambda_id)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    y = torch.nn.functional.normalize(torch.randn(args.batch, 512, device=device), dim=1)
    s = torch.zeros(args.batch, 4, device=device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    def step() -> None:
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (args.batch,), device=device)
        noisy = scheduler.add_noise(images, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=args.dtype == "bf16"):
            pred = unet(noisy, t, encoder_hidden_states=cond(y, s)).sample
            terms = id3_loss(
                config,
                noise_pred=pred,
                noise=noise,
                noisy=noisy,
                clean=images,
                timesteps=t,
                alphas_cumprod=abar,
                identity_embeddings=y,
                identity_encoder=encoder,
            )
        terms["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.train_steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16, help="training batch (ID3: 16)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--encoder", default="r50", help="identity-encoder backbone (random weights)")
    parser.add_argument("--sample-batch", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=50)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "bench_id3_gpu: no CUDA device here; run it on a GPU machine (or pass --device cpu for a smoke run)"
        )
        return 1
    with_id = train_rate(args, lambda_id=1.0)
    without_id = train_rate(args, lambda_id=0.0)
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "preset": args.preset,
        "size": args.size,
        "batch": args.batch,
        "train_steps_per_s": with_id,
        "train_images_per_s": with_id * args.batch,
        "train_steps_per_s_without_identity_term": without_id,
        "identity_term_cost_ratio": without_id / with_id,
    }
    print(
        f"training ({result['device']}, {args.dtype}, {args.size}px, batch {args.batch}): "
        f"{with_id:.2f} steps/s ({with_id * args.batch:.1f} images/s); without the identity term "
        f"{without_id:.2f} steps/s (identity term costs {without_id / with_id:.2f}x)"
    )
    print(json.dumps(result))
    sys.stdout.flush()
    return sampling_main(
        [
            "--preset",
            args.preset,
            "--size",
            str(args.size),
            "--batch",
            str(args.sample_batch),
            "--steps",
            str(args.sample_steps),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--encoder",
            args.encoder,
            "--embedding-dim",
            "512",
            "--cross-attention-dim",
            "768",
            "--json",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
