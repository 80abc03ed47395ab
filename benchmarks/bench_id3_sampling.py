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

``--compare`` (issue 17) times and compares samplers and guidance options on a *trained* pipeline, on
the same seeds and conditions, against 50-step DDIM: DPM-Solver++ and UniPC at ``--fast-steps`` (20),
DDIM with the identity gradient every 2nd step, and in the first half of the schedule only. Quality
columns: ``id_cos`` = cos(f_A(image), condition y), ``anchor_cos`` = cos(f_A(image), identity anchor)
(conditions at cosine 0.7-0.9 to random anchors), ``paired_cos_B`` = mean cos under the evaluation
encoder B between each image and the DDIM-50 image of the same seed, and ``frechet_B`` = Frechet
distance between the B-embedding sets of the option and of DDIM-50; ``frechet_B`` of DDIM-50 with other
seeds is the noise floor a difference must exceed to mean anything.

    python -m facesynth.benchmarks.bench_id3_sampling --compare --pipeline RUN/pipeline \\
        --identity-encoder torch:ENC_A --eval-encoder torch:ENC_B --kappa 30 --batch 32
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (rows = samples)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(root)))


def compare(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Load the pipeline and both encoders named in ``args``, then :func:`compare_samplers`."""
    from facesynth.generators.id3_pipeline import ID3Pipeline
    from facesynth.recognizers.encoders import load_encoder

    device = torch.device(args.device)
    pipe = ID3Pipeline.from_pretrained(args.pipeline).to(device)
    pipe.set_progress_bar_config(disable=True)
    encoder_a = load_encoder(args.identity_encoder, device=device)
    encoder_b = load_encoder(args.eval_encoder, device=device)
    return compare_samplers(pipe, encoder_a, encoder_b, args.batch, args.kappa, args.fast_steps, device)


def compare_samplers(
    pipe: Any,
    encoder_a: Any,
    encoder_b: Any,
    batch: int,
    kappa: float,
    fast_steps: int = 20,
    device: torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """Time and quality of each sampling option against 50-step DDIM on the same seeds (see docstring)."""
    from facesynth.generators.id3_loss import embed_for_identity
    from facesynth.generators.identity_sampling import cosine_band_embeddings

    device = device or torch.device("cpu")
    dim = int(pipe.condition_encoder.config.embedding_dim)
    rng = np.random.default_rng(0)
    anchors = rng.standard_normal((batch, dim))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    y = np.stack([cosine_band_embeddings(a, rng.uniform(0.7, 0.9, 1), rng)[0] for a in anchors])
    y_t = torch.from_numpy(y).float().to(device)
    attributes = None
    if pipe.condition_encoder.config.num_attributes:
        attributes = np.column_stack(
            [
                rng.normal(0, 20, batch).clip(-60, 60),
                rng.normal(0, 8, batch),
                np.zeros(batch),
                rng.uniform(20, 60, batch),
            ]
        ).astype(np.float32)
    saved = pipe.scheduler

    def sample(scheduler: str, steps: int, seed: int = 0, **options):
        pipe.scheduler = saved
        pipe.use_scheduler(scheduler)
        generators = [torch.Generator().manual_seed(seed * 100_000 + i) for i in range(batch)]
        start, cpu_start = time.perf_counter(), time.process_time()
        images = pipe(
            y_t,
            attributes,
            num_inference_steps=steps,
            id_guidance=kappa,
            identity_encoder=encoder_a,
            generator=generators,
            output_type="pt",
            **options,
        ).images
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        # on a CPU shared with other jobs the wall clock counts their time too; process CPU time does not
        cpu = time.process_time() - cpu_start if device.type == "cpu" else seconds
        return images.to(device) * 2 - 1, (seconds, cpu)

    def quality(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            a = embed_for_identity(encoder_a, images).cpu().numpy()
            b = embed_for_identity(encoder_b, images).cpu().numpy()
        return a, b

    options = {
        "ddim_50": ("ddim", 50, {}),
        f"dpmsolver++_{fast_steps}": ("dpmsolver++", fast_steps, {}),
        f"unipc_{fast_steps}": ("unipc", fast_steps, {}),
        "ddim_50_guidance_every_2": ("ddim", 50, {"id_guidance_every": 2}),
        "ddim_50_guidance_first_half": ("ddim", 50, {"id_guidance_until": 0.5}),
    }
    results: dict[str, dict[str, float]] = {}
    reference_b = None
    reference_time = reference_cpu = None
    for name, (scheduler, steps, extra) in options.items():
        images, (seconds, cpu) = sample(scheduler, steps, **extra)
        a, b = quality(images)
        if reference_b is None:
            reference_b, reference_time, reference_cpu = b, seconds, cpu
        results[name] = {
            "seconds": seconds,
            "time_ratio_to_ddim_50": seconds / reference_time,
            "cpu_seconds": cpu,
            "cpu_time_ratio_to_ddim_50": cpu / reference_cpu,
            "id_cos": float(np.sum(a * y, axis=1).mean()),
            "anchor_cos": float(np.sum(a * anchors, axis=1).mean()),
            "paired_cos_B": float(np.sum(b * reference_b, axis=1).mean()),
            "frechet_B": frechet_distance(b, reference_b),
        }
    images, (seconds, cpu) = sample("ddim", 50, seed=1)
    _, b = quality(images)
    results["ddim_50_other_seeds"] = {
        "seconds": seconds,
        "time_ratio_to_ddim_50": seconds / reference_time,
        "cpu_seconds": cpu,
        "cpu_time_ratio_to_ddim_50": cpu / reference_cpu,
        "paired_cos_B": float(np.sum(b * reference_b, axis=1).mean()),
        "frechet_B": frechet_distance(b, reference_b),
    }
    return results


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
    parser.add_argument("--compare", action="store_true", help="samplers vs DDIM-50 on a trained pipeline")
    parser.add_argument("--pipeline", help="trained ID3Pipeline folder (--compare)")
    parser.add_argument("--identity-encoder", help="guidance encoder spec, e.g. torch:RUN (--compare)")
    parser.add_argument("--eval-encoder", help="independent evaluation encoder spec (--compare)")
    parser.add_argument(
        "--fast-steps", type=int, default=20, help="steps of DPM-Solver++ / UniPC (--compare)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compare:
        if not (args.pipeline and args.identity_encoder and args.eval_encoder):
            parser.error("--compare needs --pipeline, --identity-encoder and --eval-encoder")
        table = compare(args)
        print(
            "option | wall time ratio to DDIM-50 | CPU time ratio | id_cos (A) | anchor_cos (A) "
            "| paired cos B | Frechet B"
        )
        for name, row in table.items():
            print(
                f"{name} | {row['time_ratio_to_ddim_50']:.3f} | {row['cpu_time_ratio_to_ddim_50']:.3f} | "
                f"{row.get('id_cos', float('nan')):.4f} | "
                f"{row.get('anchor_cos', float('nan')):.4f} | {row['paired_cos_B']:.4f} | {row['frechet_B']:.4f}"
            )
        if args.json:
            print(json.dumps(table))
        return 0
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
