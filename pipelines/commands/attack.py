"""``facesynth attack``: white-box recovery attack on a privacy method (or the RGB baseline)."""

from __future__ import annotations

import argparse

HELP = "recovery attack on a privacy method's payloads: U-Net decoder + ridge inverse, PSNR/SSIM/identity leakage"
DESCRIPTION = """\
Trains two attackers on (payload, face) pairs made by running the target's client on the attacker's
public faces (identity-disjoint from the victims): a U-Net recovery decoder (L1, optional identity
loss) and a ridge-regression linear inverse. Then recovers the victims' faces from their payloads
and reports PSNR, SSIM, identity leakage (cosine between an independent encoder's embeddings of
recovered and original faces), attack success (recovered face verified as the true identity at a
fixed FAR) and rank-1 identification, next to a no-information baseline (the public mean face).
Use --target rgb for the unprotected baseline. Writes OUT/attack.json, OUT/attack.md, OUT/samples.png.

examples:
  facesynth attack --target runs/minusface-s2 --public runs/public --victims runs/victims \\
      --encoder torch:runs/rgb-encoder --out runs/attack-minusface
  facesynth attack --target rgb --public runs/param200 --public-fraction 0.5 --out runs/attack-rgb
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="trained privacy-method folder, or 'rgb'")
    parser.add_argument("--public", nargs="+", required=True, metavar="DIR", help="attacker's shard folders")
    parser.add_argument("--victims", nargs="*", default=[], metavar="DIR", help="victims' shard folders")
    parser.add_argument(
        "--public-fraction",
        type=float,
        default=0.5,
        help="without --victims: share of identities (sorted) given to the attacker, the rest are victims",
    )
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument(
        "--encoder", default=None, help="independent identity encoder: torch:PATH, onnx:PATH, ..."
    )
    parser.add_argument("--max-public-images", type=int, default=2000)
    parser.add_argument("--max-victim-images", type=int, default=500)
    parser.add_argument("--decoder-steps", type=int, default=1500)
    parser.add_argument("--decoder-widths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--decoder-lr", type=float, default=2e-3)
    parser.add_argument("--decoder-lr-schedule", choices=["cosine", "constant"], default="cosine")
    parser.add_argument(
        "--multi-query-ks",
        type=int,
        nargs="*",
        default=[],
        help="randomised targets: also attack with k payloads of each face, for each k (e.g. 1 4 16)",
    )
    parser.add_argument(
        "--identity-weight", type=float, default=0.0, help="identity loss weight (torch: encoder)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-ridge", action="store_true", help="skip the ridge inverse")
    parser.add_argument("--ridge-mode", choices=["local", "global"], default="local")
    parser.add_argument("--ridge-alpha", type=float, default=1.0)
    parser.add_argument("--ridge-kernel", type=int, default=3)
    parser.add_argument(
        "--ridge-positions", type=int, default=512, help="sampled positions per image (local)"
    )
    parser.add_argument("--ridge-pool", type=int, default=4, help="average pooling of the payload (global)")
    parser.add_argument("--far", type=float, default=1e-3, help="false-accept rate of the success threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import facesynth.privacy  # noqa: F401  (registers the privacy methods)
    from facesynth.pipelines.attack import AttackStageConfig, markdown_report, run_attack_stage

    config = AttackStageConfig.from_mapping(
        {
            "target": args.target,
            "public": args.public,
            "victims": args.victims,
            "public_fraction": args.public_fraction,
            "output_dir": args.out,
            "encoder": args.encoder,
            "max_public_images": args.max_public_images,
            "max_victim_images": args.max_victim_images,
            "decoder_steps": args.decoder_steps,
            "decoder_widths": args.decoder_widths,
            "decoder_lr": args.decoder_lr,
            "decoder_lr_schedule": args.decoder_lr_schedule,
            "multi_query_ks": args.multi_query_ks,
            "identity_weight": args.identity_weight,
            "batch_size": args.batch_size,
            "ridge": not args.no_ridge,
            "ridge_mode": args.ridge_mode,
            "ridge_alpha": args.ridge_alpha,
            "ridge_kernel": args.ridge_kernel,
            "ridge_positions": args.ridge_positions,
            "ridge_pool": args.ridge_pool,
            "far": args.far,
            "seed": args.seed,
            "device": args.device,
            "progress": not args.no_progress,
        },
        source="facesynth attack",
    )
    results = run_attack_stage(config)
    print(markdown_report(results))
    print(f"report: {config.output_dir}/attack.md (attack.json, samples.png)")
    return 0
