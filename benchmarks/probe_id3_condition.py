"""Does ID3 learn its identity condition? id_cos of generated faces on seen and unseen identities.

The ablation table (``ablation_id3_parametric``) only means something once an ID3 model draws the
identity it is given. This probe measures that one thing, per condition-wiring variant, at a budget a
CPU affords:

1. render disjoint parametric sets: A and B (train encoders **A**, the conditioning / loss / guidance
   encoder, and **B**, an independent evaluator), T (ID3's training faces, conditioned on A's
   embeddings) and E (unseen identities);
2. train one ID3 model per variant on T (same steps, batch, lr and seed);
3. for 60 identities of T (*seen*) and 60 of E (*unseen*), condition on A's embedding of one source
   face and generate two faces each; ``id_cos_B`` is the cosine under B between a generated face and its
   source, ``impostor_B`` the same against another identity's source. A model that ignores its condition
   has ``id_cos_B == impostor_B``; the *real* row (two renders of the same identity) is the ceiling.

Variants (the paper does not say how its condition reaches the UNet; see ``generators/id3_unet.py``):

==================  =====================================================================================
``base``            one condition token, cross-attention at the preset's levels (``tiny``: the low one)
``time_embedding``  also added to the timestep embedding, cross-attention at every level
``no_id_loss``      ``base`` trained without the identity term (``lambda_id = 0``)
==================  =====================================================================================

Results: OUT/probe.json and OUT/probe.md. Measured figures and their wall times are in
``benchmarks/results/id3_condition_probe_cpu.txt``.

    python -m facesynth.benchmarks.probe_id3_condition --steps 1500 --variants base time_embedding --out runs/probe
    python -m facesynth.benchmarks.probe_id3_condition --smoke --out runs/probe-smoke   # seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesynth.benchmarks.ablation_id3_parametric import RECIPES, train_model
from facesynth.benchmarks.experiment_id3_parametric import (
    embed,
    id_cos_rows,
    load_rows,
    render,
    train_fr,
    write_conditioned,
)

logger = logging.getLogger("facesynth.probe_id3_condition")

#: identities x images per identity and seed of each rendered set
SETS: dict[str, tuple[int, int, int]] = {
    "enc_a": (300, 8, 101),
    "enc_b": (300, 8, 202),
    "id3_train": (1000, 4, 303),
    "test": (100, 4, 505),
}
SMOKE_SETS: dict[str, tuple[int, int, int]] = {name: (10, 4, seed) for name, (_, _, seed) in SETS.items()}
#: the trainer settings a variant changes
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "time_embedding": {"unet_kwargs": {"condition_in_time_embedding": True, "cross_attention_levels": "all"}},
    "no_id_loss": {"loss": {"lambda_id": 0.0}},
}
#: identities of T and of E whose faces are generated in the evaluation
EVAL_IDENTITIES = 60


def train_variant(
    data: Path,
    out: Path,
    encoder_dir: Path,
    steps: int,
    size: int,
    batch_size: int,
    lr: float,
    **changes: Any,
) -> Path:
    """One ID3 model on T with the ablation's ``cpu`` settings at this size and budget (pipeline folder)."""
    recipe = {
        **RECIPES["cpu"],
        "id3_steps": steps,
        "image_size": size,
        "batch_size": batch_size,
        "id3_lr": lr,
        "id3_warmup": min(200, steps // 10),
    }
    return train_model(data, out, encoder_dir, recipe, 0, sample_every=max(1, steps // 3), **changes)


def first_identities(rows: dict[str, Any], count: int) -> dict[str, Any]:
    """The rows of the first ``count`` labels (every column filtered alike)."""
    keep = rows["labels"] < count
    return {
        key: value[keep]
        if isinstance(value, np.ndarray)
        else [v for v, k in zip(value, keep, strict=True) if k]
        for key, value in rows.items()
    }


def real_ceiling(encoder_b: Any, rows: dict[str, Any]) -> dict[str, float]:
    """B's cosine between two real renders of one identity, and between different identities."""
    labels = rows["labels"]
    firsts = np.array([np.flatnonzero(labels == label)[0] for label in np.unique(labels)])
    seconds = np.array([np.flatnonzero(labels == label)[1] for label in np.unique(labels)])
    a, b = embed(encoder_b, rows["images"][firsts]), embed(encoder_b, rows["images"][seconds])
    return {
        "id_cos_B": float(np.sum(a * b, axis=1).mean()),
        "impostor_cos_B": float(np.sum(a * np.roll(b, 1, axis=0), axis=1).mean()),
    }


def run(
    out: Path,
    steps: int,
    variants: list[str],
    size: int = 16,
    batch_size: int = 32,
    lr: float = 1e-3,
    kappa: float = 30.0,
    encoder_steps: int = 800,
    sets: dict[str, tuple[int, int, int]] | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    from facesynth.recognizers.encoders import load_encoder

    torch.set_num_threads(threads)
    sets = sets or SETS
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = {name: render(out, name, *spec) for name, spec in sets.items()}
    enc_dirs = {
        name: train_fr(data[f"enc_{name.lower()}"], out / f"encoder_{name}", encoder_steps, seed, 32, False)
        for name, seed in (("A", 1), ("B", 2))
    }
    encoder_a, encoder_b = (load_encoder(f"torch:{enc_dirs[name]}") for name in ("A", "B"))
    train_rows = load_rows(data["id3_train"])
    conditioned = write_conditioned(
        train_rows, embed(encoder_a, train_rows["images"]), out / "data" / "id3_train_A"
    )
    seen = first_identities(train_rows, EVAL_IDENTITIES)
    unseen = first_identities(load_rows(data["test"]), EVAL_IDENTITIES)
    results: dict[str, Any] = {
        "settings": {"steps": steps, "size": size, "batch_size": batch_size, "lr": lr, "kappa": kappa},
        "sets": sets,
        "real": {"seen": real_ceiling(encoder_b, seen), "unseen": real_ceiling(encoder_b, unseen)},
        "variants": {},
        "prep_s": round(time.perf_counter() - started, 1),
    }
    for name in variants:
        t = time.perf_counter()
        pipeline = train_variant(
            conditioned, out / name, enc_dirs["A"], steps, size, batch_size, lr, **VARIANTS[name]
        )
        train_s = time.perf_counter() - t
        rows = {
            "seen": id_cos_rows(pipeline, encoder_a, encoder_b, seen, [0.0], 20),
            "unseen": id_cos_rows(pipeline, encoder_a, encoder_b, unseen, [0.0, kappa], 20),
        }
        rows["train_s"] = round(train_s, 1)
        rows["eval_s"] = round(time.perf_counter() - t - train_s, 1)
        results["variants"][name] = rows
        logger.info("variant %s: %s", name, rows)
    results["total_s"] = round(time.perf_counter() - started, 1)
    (out / "probe.json").write_text(json.dumps(results, indent=2))
    (out / "probe.md").write_text(format_results(results))
    return results


def format_results(results: dict[str, Any]) -> str:
    """One Markdown table: genuine vs impostor cosine under B per variant, seen and unseen, kappa 0 and > 0."""
    kappa = results["settings"]["kappa"]
    lines = [
        f"ID3 condition probe ({json.dumps(results['settings'])})",
        "",
        f"| variant | train s | seen k=0 id/imp (B) | unseen k=0 id/imp (B) | unseen k={kappa:g} id/imp (B) "
        f"| unseen k={kappa:g} cos A |",
        "|---|---|---|---|---|---|",
    ]

    def pair(entry: dict[str, float]) -> str:
        return f"{entry['id_cos_B']:.3f} / {entry['impostor_cos_B']:.3f}"

    for name, rows in results["variants"].items():
        guided = rows["unseen"][f"kappa={kappa:g}"]
        lines.append(
            f"| {name} | {rows['train_s']:.0f} | {pair(rows['seen']['kappa=0'])} | "
            f"{pair(rows['unseen']['kappa=0'])} | {pair(guided)} | {guided['guidance_cos_A']:.3f} |"
        )
    real = results["real"]
    lines.append(f"| real renders | - | {pair(real['seen'])} | {pair(real['unseen'])} | - | - |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/probe_id3_condition"))
    parser.add_argument("--steps", type=int, default=1500, help="ID3 training steps per variant")
    parser.add_argument("--variants", nargs="+", default=["base", "time_embedding"], choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, default=16, help="ID3 image size (pixel space)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--kappa", type=float, default=30.0, help="id_guidance of the guided row")
    parser.add_argument("--encoder-steps", type=int, default=800, help="training steps of encoders A and B")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy box)")
    parser.add_argument("--smoke", action="store_true", help="tiny sets, a few steps: checks the stages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = run(
        args.out,
        4 if args.smoke else args.steps,
        args.variants,
        size=args.size,
        batch_size=4 if args.smoke else args.batch_size,
        lr=args.lr,
        kappa=args.kappa,
        encoder_steps=4 if args.smoke else args.encoder_steps,
        sets=SMOKE_SETS if args.smoke else None,
        threads=args.threads,
    )
    print(format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
