"""Arc2Face dataset throughput: measured on a GPU with the real weights, or estimated from FLOPs.

``--measure`` times ``Arc2FaceGenerator.generate`` (after one warm-up batch) with the weights given by
``--model`` / ``--base-model`` and prints images/s and the hours a 10K x 50 dataset takes on that device.

Without ``--measure`` (no GPU, no weights needed) it counts FLOPs on the meta device (torch's
FlopCounterMode) for one Arc2Face image (SD 1.5 UNet at 64x64 latents, a CFG pair per step, plus the VAE
decode) and for one image of ID3's ``base`` sampler at 112x112 (one UNet call per step, 50 steps), whose
throughput this project measured on one H100 in bf16 (README, "ID3 sampling": 14.3 images/s). The
estimate assumes Arc2Face reaches the same FLOP rate, which big 64x64 convolutions usually exceed:
treat it as a rough upper bound on time, and measure on your GPU.

    python -m facesynth.benchmarks.bench_arc2face                       # FLOP-based estimate (CPU)
    python -m facesynth.benchmarks.bench_arc2face --measure --device cuda --dtype float16 --batch 16
"""

from __future__ import annotations

import argparse
import json
import time

import torch

#: ID3 sampling, base UNet, bf16, batch 64, 50 DDIM steps, one H100 (README table, 2026-11-27)
ID3_BASE_IMAGES_PER_S_H100 = 14.3
ID3_BASE_STEPS = 50
DATASET_IMAGES = 10_000 * 50


def _flops(run) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def arc2face_flops_per_image(steps: int, guidance: bool) -> float:
    """UNet calls (x2 with classifier-free guidance) per step plus one VAE decode, SD 1.5 shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280),
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
        )
    calls = 2 if guidance else 1
    step = _flops(
        lambda: unet(torch.randn(calls, 4, 64, 64), 10, encoder_hidden_states=torch.randn(calls, 77, 768))
    )
    decode = _flops(lambda: vae.decode(torch.randn(1, 4, 64, 64)))
    return steps * step + decode


def id3_base_flops_per_image() -> float:
    from facesynth.generators.id3_unet import build_id3_unet

    with torch.device("meta"):
        unet = build_id3_unet("base", 112, cross_attention_dim=768)
    step = _flops(lambda: unet(torch.randn(1, 3, 112, 112), 10, encoder_hidden_states=torch.randn(1, 2, 768)))
    return ID3_BASE_STEPS * step


def estimate(args: argparse.Namespace) -> dict:
    arc2face = arc2face_flops_per_image(args.steps, args.guidance_scale > 1)
    id3 = id3_base_flops_per_image()
    rate = ID3_BASE_IMAGES_PER_S_H100 * id3 / arc2face
    return {
        "mode": "estimate",
        "arc2face_tflop_per_image": arc2face / 1e12,
        "id3_base_tflop_per_image": id3 / 1e12,
        "estimated_images_per_s_h100": rate,
        "estimated_hours_10k_x_50_one_h100": DATASET_IMAGES / rate / 3600,
    }


def measure(args: argparse.Namespace) -> dict:
    from facesynth.generators.registry import SampleRequest, build_generator, sample_seed

    generator = build_generator(
        "arc2face",
        num_identities=max(args.batch, 2),
        seed=0,
        device=args.device,
        model=args.model,
        base_model=args.base_model,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        dtype=args.dtype,
        anchors="random",
        batch_size=args.batch,
        identity_encoder=args.identity_encoder,
        id_guidance=args.id_guidance,
    )
    batches = [
        [SampleRequest(i, b, sample_seed(0, i, b)) for i in range(args.batch)]
        for b in range(args.batches + 1)
    ]
    generator.generate(batches[0])  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[1:]:
        generator.generate(batch)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    rate = args.batch * args.batches / (time.perf_counter() - start)
    return {
        "mode": "measured",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "images_per_s": rate,
        "hours_10k_x_50": DATASET_IMAGES / rate / 3600,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--measure", action="store_true", help="time the real generator instead of estimating"
    )
    parser.add_argument("--model", default="FoivosPar/Arc2Face")
    parser.add_argument("--base-model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--identity-encoder", default=None)
    parser.add_argument("--id-guidance", type=float, default=0.0)
    args = parser.parse_args(argv)
    result = {**vars(args), **(measure(args) if args.measure else estimate(args))}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
