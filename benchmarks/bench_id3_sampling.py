"""ID3Pipeline sampling speed against a bare UNet + scheduler loop timed in the same run.

The baseline is the minimum any sampler must do: precomputed condition tokens, initial noise, and
per step one ``unet(...)`` call and one ``scheduler.step``. The pipeline adds input checks, condition
encoding, output conversion; its images/s with ``kappa = 0`` divided by the baseline's is the overhead
ratio (target >= 0.9). The cost of ID-preserving guidance (``kappa > 0``: an identity-encoder forward
and backward per step, with or without back-propagating through the UNet) is printed as the ratio of
its time to the ``kappa = 0`` pipeline's.

    python -m facesynth.benchmarks.bench_id3_sampling                         # CPU, small 32 px model
    python -m facesynth.benchmarks.bench_id3_sampling --preset base --size 112 --device cuda --dtype bf16 \\
        --batch 64 --steps 50 --encoder r50
"""

from __future__ import annotations

import argparse
import json
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(args: argparse.Namespace):
    """A randomly initialised pipeline and a random-weight IResNet identity encoder (speed only)."""
    from diffusers import DDIMScheduler

    from facesynth.generators.id3_condition_encoder import ID3ConditionEncoder
    from facesynth.generators.id3_pipeline import ID3Pipeline
    from facesynth.generators.id3_unet import build_id3_unet
    from facesynth.recognizers.backbones import build_backbone
    from facesynth.recognizers.encoders import TorchEncoder

    torch.manual_seed(0)
    unet = build_id3_unet(args.preset, args.size, cross_attention_dim=args.cross_attention_dim)
    cond = ID3ConditionEncoder(embedding_dim=args.embedding_dim, cross_attention_dim=args.cross_attention_dim)
    pipe = ID3Pipeline(unet=unet, scheduler=DDIMScheduler(), condition_encoder=cond)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    backbone = build_backbone(args.encoder, num_features=args.embedding_dim).to(device, dtype)
    encoder = TorchEncoder(backbone.requires_grad_(False), description=f"random {args.encoder}")
    return pipe, encoder


def bare_loop(pipe, y: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
    """The baseline: tokens once, then unet + scheduler.step per step (no checks, no guidance)."""
    from diffusers.utils.torch_utils import randn_tensor

    unet, scheduler = pipe.unet, pipe.scheduler
    with torch.no_grad():
        s = torch.zeros(y.shape[0], 4, device=y.device)
        tokens = pipe.condition_encoder(y, s).to(unet.dtype)
        size = unet.config.sample_size
        x = randn_tensor(
            (y.shape[0], unet.config.in_channels, size, size),
            generator=generator,
            device=y.device,
            dtype=unet.dtype,
        )
        scheduler.set_timesteps(steps, device=y.device)
        for t in scheduler.timesteps:
            eps = unet(x, t, encoder_hidden_states=tokens).sample
            x = scheduler.step(eps, t, x).prev_sample
    return x


def timed(fn, device: torch.device, repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small", help="UNet preset (default small)")
    parser.add_argument("--size", type=int, default=32, help="pixel size (default 32)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kappa", type=float, default=1.0)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--cross-attention-dim", type=int, default=256)
    parser.add_argument("--encoder", default="tiny", help="backbone name for the guidance encoder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipe, encoder = build(args)
    y = torch.nn.functional.normalize(torch.randn(args.batch, args.embedding_dim), dim=1).to(device)

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    def pipeline(kappa: float, through: bool = False):
        return lambda: pipe(
            y,
            num_inference_steps=args.steps,
            id_guidance=kappa,
            id_guidance_through_unet=through,
            identity_encoder=encoder if kappa > 0 else None,
            generator=gen(),
            output_type="pt",
        )

    bare = timed(lambda: bare_loop(pipe, y, args.steps, gen()), device, args.repeats)
    plain = timed(pipeline(0.0), device, args.repeats)
    guided = timed(pipeline(args.kappa), device, args.repeats)
    through = timed(pipeline(args.kappa, True), device, args.repeats)
    result = {
        "device": str(device),
        "dtype": args.dtype,
        "preset": args.preset,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "bare_images_per_s": args.batch / bare,
        "pipeline_images_per_s": args.batch / plain,
        "pipeline_vs_bare_ratio": bare / plain,
        "kappa_cost_ratio_encoder_only": guided / plain,
        "kappa_cost_ratio_through_unet": through / plain,
    }
    print(f"bare UNet+scheduler loop : {result['bare_images_per_s']:.2f} images/s")
    print(
        f"ID3Pipeline, kappa = 0   : {result['pipeline_images_per_s']:.2f} images/s "
        f"(ratio to bare {result['pipeline_vs_bare_ratio']:.3f}; target >= 0.9)"
    )
    print(f"kappa > 0, encoder grad  : {result['kappa_cost_ratio_encoder_only']:.2f}x the kappa = 0 time")
    print(f"kappa > 0, through UNet  : {result['kappa_cost_ratio_through_unet']:.2f}x the kappa = 0 time")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
