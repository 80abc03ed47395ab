"""ID3's ablation table on parametric faces (issue 14.1): every row trains a recognizer on its own data.

A testbed where ID3 can succeed: the parametric renderer gives unlimited labelled identities, so ID3
trains on thousands of identities (set T), its identity encoder **A** on a disjoint set, and an
independent evaluation encoder **B** on a third; downstream recognizers are verified on a fourth
(unseen) set E. Per seed:

1. ID3 models on T (same budget): ``full`` (identity loss), ``no_id_loss`` (``lambda_id = 0``),
   ``no_attributes`` (``use_attributes = false``) and ``time_embedding`` (the condition also added to the
   timestep embedding, cross-attention at every level);
2. one dataset per row with ``facesynth generate --generator id3`` (identities x images of the
   recipe), rows as in the paper's ablations:

   ===================  ==========================================================================
   full                 full model, Tammes anchors, band [0.7, 0.9], empirical attributes, kappa
   no_id_loss           model trained without the identity term, sampled like ``full``
   kappa_0              full model, kappa = 0 (no reversed-likelihood score)
   random_anchors       anchors drawn at random instead of a Tammes packing
   band_0.5_0.7         intra-class cosine band [0.5, 0.7] instead of [0.7, 0.9]
   no_attributes        model without attribute input, ``attributes=none``
   kappa_id3_sigmoid    full model, kappa_t = kappa * 0.5 (1 - sigmoid(t / T)), the identity term's
                        training weight (issue 14.2), instead of the default kappa * alpha_bar_t
   time_embedding       condition wiring (issue 14.2): the ``time_embedding`` model, sampled like ``full``
   renderer             parametric renders at the same identities x images (the reference)
   ===================  ==========================================================================

3. columns: ``genuine`` / ``impostor`` mean cosine under B between images of the same / different
   identities of the row's dataset; ``attr_spread``: mean intra-class std of the *requested* yaw
   (degrees; the realised pose of generated faces is not measured); ``accuracy`` (10-fold) and
   ``tar@far=1e-3`` of a recognizer trained on the row's data, verified on unseen rendered identities E.

Results: OUT/ablation.json, OUT/ablation.md (mean +- std over seeds). The ``full`` recipe takes hours on
a CPU (about 1,700 h scaled from ``cpu20`` on the shared 2-core box): do not start it there;
``--smoke`` checks every stage in under a minute on an idle 2-core box (41 s wall, 36 s of CPU) and
``--recipe cpu20`` (one seed, 6.5 minutes) calibrates the stage times. Every run prints the full recipe's expected wall time, scaled
from its own stage times (start-up kept, training compute scaled by work). Verification pairs are
balanced, so chance accuracy is 0.5.

    python -m facesynth.benchmarks.ablation_id3_parametric --smoke --out runs/ablation-smoke
    python -m facesynth.benchmarks.ablation_id3_parametric --recipe full --out runs/ablation   # hours
    python -m facesynth.benchmarks.ablation_id3_parametric --recipe gpu64 --out runs/ablation-gpu  # one GPU
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

from facesynth.benchmarks.experiment_id3_parametric import (
    embed,
    load_rows,
    render,
    train_fr,
    write_conditioned,
)

logger = logging.getLogger("facesynth.ablation_id3")

#: recipe: rendered sets (identities, images, seed), steps, sizes, generated-dataset shape
RECIPES: dict[str, dict[str, Any]] = {
    "smoke": {
        "sets": {"enc_a": (8, 4, 101), "enc_b": (8, 4, 202), "id3_train": (12, 4, 303), "test": (8, 4, 505)},
        "encoder_steps": 5,
        "id3_steps": 4,
        "fr_steps": 5,
        "generated": (8, 5),
        "image_size": 16,
        "unet_preset": "tiny",
        "fr_input_size": 32,
        "sample_steps": 4,
        "kappa": 30.0,
        "seeds": [0],
    },
    "cpu20": {
        # reduced, one seed, 6.5 minutes on the shared 2-core box (load 4): calibrates stage times, not a result
        "sets": {
            "enc_a": (60, 8, 101),
            "enc_b": (60, 8, 202),
            "id3_train": (300, 4, 303),
            "test": (40, 6, 505),
        },
        "encoder_steps": 100,
        "id3_steps": 60,
        "fr_steps": 50,
        "generated": (40, 6),
        "image_size": 16,
        "unet_preset": "tiny",
        "fr_input_size": 32,
        "sample_steps": 10,
        "kappa": 30.0,
        "seeds": [0],
    },
    "cpu": {
        # the largest recipe a 2-core CPU affords (benchmarks/results/ablation_id3_cpu.txt): the sets,
        # encoders and ID3 settings of probe_id3_condition, whose 1,500-step model draws the identity it
        # is given (id_cos under B 0.39 on unseen identities vs 0.04 for impostors)
        "sets": {
            "enc_a": (300, 8, 101),
            "enc_b": (300, 8, 202),
            "id3_train": (1000, 4, 303),
            "test": (100, 4, 505),
        },
        "encoder_steps": 800,
        "id3_steps": 1500,
        "id3_lr": 1e-3,
        "id3_warmup": 150,
        "ema_decay": 0.995,
        "id3_buffer": 1024,
        "batch_size": 32,
        "fr_steps": 600,
        "generated": (100, 8),
        "image_size": 16,
        "unet_preset": "tiny",
        "fr_input_size": 32,
        "sample_steps": 20,
        "kappa": 30.0,
        "seeds": [0, 1, 2],
    },
    "full": {
        # >= 2,000 identities for ID3 (issue 14.1); 32 px pixel space, small UNet
        "sets": {
            "enc_a": (500, 12, 101),
            "enc_b": (500, 12, 202),
            "id3_train": (2000, 6, 303),
            "test": (200, 6, 505),
        },
        "encoder_steps": 2000,
        "id3_steps": 20000,
        "fr_steps": 1500,
        "generated": (300, 10),
        "image_size": 32,
        "unet_preset": "small",
        "fr_input_size": 56,
        "sample_steps": 20,
        "kappa": 30.0,
        "seeds": [0, 1, 2],
    },
    "gpu64": {
        # one lent GPU (issue 14.5): 64x64, bf16, about 8 minutes of ID3 training per model (H100-class)
        "sets": {
            "enc_a": (1000, 10, 101),
            "enc_b": (1000, 10, 202),
            "id3_train": (4000, 8, 303),
            "test": (300, 6, 505),
        },
        "encoder_steps": 1500,
        "id3_steps": 2500,
        "fr_steps": 1500,
        "generated": (500, 10),
        "image_size": 64,
        "unet_preset": "small",
        "fr_input_size": 112,
        "sample_steps": 20,
        "scheduler": "dpmsolver++",
        "kappa": 30.0,
        "batch_size": 64,
        "mixed_precision": "bf16",
        "dtype": "bfloat16",
        "seeds": [0],
    },
}
# the cpu recipe with the cosine noise schedule and lr 2e-3, which draw faces in far fewer steps at 16 px
# (README, ID3 example); its sets and encoders are the cpu recipe's, so a run can share them
RECIPES["cpu_cosine"] = {
    **RECIPES["cpu"],
    "id3_lr": 2e-3,
    "id3_warmup": 50,
    "beta_schedule": "squaredcos_cap_v2",
}
#: batch size of ``experiment_id3_parametric.train_fr`` (encoders and downstream recognizers)
FR_BATCH = 32
ROWS = (
    "full",
    "no_id_loss",
    "kappa_0",
    "random_anchors",
    "band_0.5_0.7",
    "no_attributes",
    "kappa_id3_sigmoid",
    "time_embedding",
    "renderer",
)
#: row -> (ID3 model, generator options over the full row's)
ROW_SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {}),
    "no_id_loss": ("no_id_loss", {}),
    "kappa_0": ("full", {"id_guidance": 0.0}),
    "random_anchors": ("full", {"anchors": "random"}),
    "band_0.5_0.7": ("full", {"cos_lb": 0.5, "cos_ub": 0.7}),
    "no_attributes": ("no_attributes", {"attributes": "none"}),
    "kappa_id3_sigmoid": ("full", {"id_guidance_schedule": "id3_sigmoid"}),
    "time_embedding": ("time_embedding", {}),
}
MODELS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_id_loss": {"loss": {"lambda_id": 0.0}},
    "no_attributes": {"use_attributes": False},
    # the ``time_embedding`` variant of probe_id3_condition (its 1,500-step model is this recipe's, seed 0)
    "time_embedding": {"unet_kwargs": {"condition_in_time_embedding": True, "cross_attention_levels": "all"}},
}


def fr_once(data: Path, out: Path, steps: int, seed: int, size: int) -> Path:
    """``train_fr`` unless ``out`` holds a finished recognizer (a rerun resumes a long table)."""
    if (out / "backbone.safetensors").exists():
        logger.info("%s: reusing the trained recognizer", out)
        return out
    return train_fr(data, out, steps, seed, size, export_onnx=False)


def folder_name(row: str) -> str:
    """A row's folder: no dots, which core.locks would read as a file suffix ("band_0.5_0.7")."""
    return row.replace(".", "")


def train_model(
    data: Path, out: Path, encoder_dir: Path, recipe: dict[str, Any], seed: int, **changes: Any
) -> Path:
    """One ID3 model on T with encoder A (``changes`` = the ablated config fields)."""
    from facesynth.generators.id3_trainer import ID3TrainConfig, train_id3

    steps = recipe["id3_steps"]
    settings: dict[str, Any] = dict(
        data=[str(data)],
        output_dir=str(out),
        image_size=recipe["image_size"],
        unet_preset=recipe["unet_preset"],
        hidden_dims=(256, 256),
        cross_attention_dim=256,
        identity_encoder=f"torch:{encoder_dir}",
        batch_size=recipe.get("batch_size", 16),
        mixed_precision=recipe.get("mixed_precision", "no"),
        lr=recipe.get("id3_lr", 3e-4),
        beta_schedule=recipe.get("beta_schedule", "linear"),
        lr_warmup_steps=recipe.get("id3_warmup", min(500, steps // 10)),
        max_steps=steps,
        ema_decay=recipe.get("ema_decay", 0.999 if steps >= 5000 else 0.99),
        checkpoint_every=0,
        sample_every=0,
        sample_count=16,
        sample_steps=recipe["sample_steps"],
        log_every=max(1, steps // 20),
        num_workers=0,
        buffer_size=recipe.get("id3_buffer", 256),
        progress=False,
        seed=seed,
    )
    settings.update(changes)
    if (out / "pipeline" / "model_index.json").exists():  # finished by an earlier run: reuse it
        logger.info("%s: reusing the trained pipeline", out)
        return out / "pipeline"
    return train_id3(ID3TrainConfig.from_mapping(settings)).pipeline_dir


def generate_row(
    out: Path,
    pipeline: Path,
    encoder_dir: Path,
    reference: Path,
    recipe: dict[str, Any],
    seed: int,
    **options: Any,
) -> Path:
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset

    identities, per_identity = recipe["generated"]
    settings: dict[str, Any] = {
        "pipeline": str(pipeline),
        "identity_encoder": f"torch:{encoder_dir}",
        "id_guidance": recipe["kappa"],
        "num_inference_steps": recipe["sample_steps"],
        "scheduler": recipe.get("scheduler", "ddim"),
        "dtype": recipe.get("dtype", "float32"),
        "reference": [str(reference)],
        "subspace_rank": 16,
        "tammes_steps": 100,
        "batch_size": 40,
    }
    settings.update(options)
    config = GenerateConfig(
        generator="id3",
        identities=identities,
        per_identity=per_identity,
        out=out,
        seed=seed,
        options=settings,
    )
    generate_dataset(config, show_progress=False)
    return out


def row_statistics(rows: dict[str, Any], encoder_b: Any) -> dict[str, float]:
    """Genuine / impostor mean cosine under B, and the mean intra-class std of the requested yaw."""
    emb = embed(encoder_b, rows["images"])
    labels = rows["labels"]
    same = labels[:, None] == labels[None, :]
    sims = emb @ emb.T
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    requested = [
        [rows["attributes"][i]["yaw"] for i in np.flatnonzero(labels == label) if rows["attributes"][i]]
        for label in np.unique(labels)
    ]
    yaws = [float(np.std(values)) for values in requested if values]  # none when no attributes were asked
    return {
        "genuine": float(sims[same & off_diagonal].mean()),
        "impostor": float(sims[~same].mean()),
        "attr_spread": float(np.nanmean(yaws)) if yaws else float("nan"),
    }


def downstream(encoder: Any, test: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """10-fold accuracy on balanced pairs of E, TAR@FAR=1e-3 on all of E's pairs.

    Accuracy: every genuine pair and as many random impostor pairs, shuffled (the folds are
    contiguous), so "always different" scores 0.5. TAR@FAR=1e-3 uses every impostor pair, since the
    FAR needs >= 1,000 of them to resolve 1e-3 (``tar_resolvable`` says whether it did).
    """
    from facesynth.recognizers.verification import kfold_accuracy, tar_at_far

    emb = embed(encoder, test["images"])
    labels = test["labels"]
    first, second = np.triu_indices(len(labels), k=1)
    sims = np.sum(emb[first] * emb[second], axis=1)
    issame = labels[first] == labels[second]
    rng = np.random.default_rng(seed)
    genuine = np.flatnonzero(issame)
    impostor = rng.choice(np.flatnonzero(~issame), size=len(genuine), replace=False)
    balanced = rng.permutation(np.concatenate([genuine, impostor]))
    accuracy = kfold_accuracy(2 - 2 * sims[balanced], issame[balanced])
    roc = tar_at_far(sims, issame, fars=(1e-3,))
    entry = roc["tar_at_far"]["0.001"]
    return {
        "accuracy": accuracy["accuracy"],
        "tar@far=1e-3": entry["tar"],
        "tar_resolvable": entry["resolvable"],
        "balanced_pairs": int(len(balanced)),
    }


def run(
    out: Path,
    recipe_name: str,
    threads: int = 1,
    seeds: list[int] | None = None,
    rows: list[str] | None = None,
) -> dict[str, Any]:
    """Every stage of ``recipe_name`` for ``seeds`` and ``rows`` (default: the recipe's seeds, all rows).

    Finished datasets, encoders, ID3 models and recognizers under ``out`` are reused, so an
    interrupted run resumes and a partial table (``rows``) can be completed later.
    """
    from facesynth.recognizers.encoders import load_encoder

    recipe = RECIPES[recipe_name]
    seeds = seeds if seeds is not None else list(recipe["seeds"])
    rows = [row for row in ROWS if row in rows] if rows else list(ROWS)
    needed = {ROW_SETTINGS[row][0] for row in rows if row != "renderer"}
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    compute: dict[str, float] = {}

    def count(stage: str, run_dir: Path, batch_size: int) -> Path:
        compute[stage] = compute.get(stage, 0.0) + compute_seconds(run_dir, batch_size)
        return run_dir

    def lap(name: str, since: float) -> float:
        timings[name] = timings.get(name, 0.0) + round(time.perf_counter() - since, 1)
        return time.perf_counter()

    t = time.perf_counter()
    data = {name: render(out, name, *spec) for name, spec in recipe["sets"].items()}
    identities, per_identity = recipe["generated"]
    t = lap("render", t)
    size = recipe["fr_input_size"]
    enc_a = fr_once(data["enc_a"], out / "encoder_A", recipe["encoder_steps"], 1, size)
    enc_b = fr_once(data["enc_b"], out / "encoder_B", recipe["encoder_steps"], 2, size)
    count("encoders", enc_a, FR_BATCH)
    count("encoders", enc_b, FR_BATCH)
    encoder_a, encoder_b = load_encoder(f"torch:{enc_a}"), load_encoder(f"torch:{enc_b}")
    t = lap("encoders", t)
    train_rows = load_rows(data["id3_train"])
    conditioned = out / "data" / "id3_train_A"
    if not (conditioned / "facesynth.json").exists():
        write_conditioned(train_rows, embed(encoder_a, train_rows["images"]), conditioned)
    test = load_rows(data["test"])
    t = lap("condition", t)

    per_seed: dict[str, list[dict[str, float]]] = {row: [] for row in rows}
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        models = {}
        for name, changes in MODELS.items():
            if name not in needed:
                continue
            models[name] = train_model(conditioned, run_dir / f"id3_{name}", enc_a, recipe, seed, **changes)
            count("id3_training", run_dir / f"id3_{name}", recipe.get("batch_size", 16))
            t = lap("id3_training", t)
        for row in rows:
            if row == "renderer":
                folder = render(run_dir, "renderer", identities, per_identity, 900 + seed)
            else:
                model, options = ROW_SETTINGS[row]
                folder = generate_row(
                    run_dir / "data" / folder_name(row),
                    models[model],
                    enc_a,
                    conditioned,
                    recipe,
                    7 + seed,
                    **options,
                )
            t = lap("generate", t)
            stats = row_statistics(load_rows(folder), encoder_b)
            fr_dir = fr_once(folder, run_dir / f"fr_{folder_name(row)}", recipe["fr_steps"], 3 + seed, size)
            count("downstream", fr_dir, FR_BATCH)
            stats.update(downstream(load_encoder(f"torch:{fr_dir}"), test, seed))
            per_seed[row].append(stats)
            t = lap("downstream", t)
            logger.info("seed %d row %s: %s", seed, row, stats)
    timings["total"] = round(time.perf_counter() - started, 1)
    table = {row: summarise(values) for row, values in per_seed.items()}
    results = {
        "recipe": recipe_name,
        "settings": {k: v for k, v in recipe.items() if k != "seeds"},
        "seeds": seeds,
        "table": table,
        "per_seed": per_seed,
        "timings_s": timings,
    }
    results["compute_s"] = {k: round(v, 1) for k, v in compute.items()}
    if rows == list(ROWS):  # a partial table's stage times do not scale to the full recipe
        results["expected_full_hours"] = expected_hours(timings, compute, recipe_name, len(seeds))
    (out / "ablation.json").write_text(json.dumps(results, indent=2))
    (out / "ablation.md").write_text(format_table(results))
    return results


def summarise(values: list[dict[str, float]]) -> dict[str, list[float]]:
    """column -> [mean, std] over seeds."""
    keys = [k for k in values[0] if isinstance(values[0][k], float)]
    return {k: [float(np.mean([v[k] for v in values])), float(np.std([v[k] for v in values]))] for k in keys}


def compute_seconds(run_dir: Path, batch_size: int) -> float:
    """Training time without start-up and saving: steps x batch / the last logged images/s."""
    import csv

    rows = list(csv.DictReader((run_dir / "train_log.csv").open()))
    if not rows:
        return 0.0
    return int(rows[-1]["step"]) * batch_size / max(float(rows[-1]["images_per_s"]), 1e-9)


def expected_hours(
    timings: dict[str, float], compute: dict[str, float], source: str, seeds_run: int, target: str = "full"
) -> float:
    """The ``target`` recipe's wall time, scaled from a run of ``source`` on this machine.

    Stages reused from an earlier run cost nothing here, so a resumed run underestimates.

    Training stages are split into start-up/saving (kept as measured, per call) and compute (scaled
    by steps x batch x pixels); the other stages scale with their image counts (x sampling steps x
    UNet cost for generation). The UNet cost of the ``small`` preset is taken as 16x ``tiny``'s per pixel.
    """
    a, b = RECIPES[source], RECIPES[target]

    def images(recipe: dict[str, Any], names: tuple[str, ...] | None = None) -> int:
        return sum(n * m for name, (n, m, _) in recipe["sets"].items() if names is None or name in names)

    def ratio(key: str) -> float:
        return b[key] / a[key]

    def unet_cost(recipe: dict[str, Any]) -> float:
        return recipe["image_size"] ** 2 * (16.0 if recipe["unet_preset"] == "small" else 1.0)

    seeds = len(b["seeds"]) / seeds_run
    unet = unet_cost(b) / unet_cost(a)
    fr_pixels = ratio("fr_input_size") ** 2
    id3_batch = b.get("batch_size", 16) / a.get("batch_size", 16)

    def trained(stage: str, work: float) -> float:
        spent = timings.get(stage, 0.0)
        done = min(compute.get(stage, 0.0), spent)
        return spent - done + done * work

    gen_images = b["generated"][0] * b["generated"][1] / (a["generated"][0] * a["generated"][1])
    seconds = (
        timings.get("render", 0.0) * images(b) / images(a)
        + trained("encoders", ratio("encoder_steps") * fr_pixels)
        + timings.get("condition", 0.0) * images(b, ("id3_train",)) / images(a, ("id3_train",))
        + seeds * trained("id3_training", ratio("id3_steps") * id3_batch * unet)
        + seeds * timings.get("generate", 0.0) * gen_images * ratio("sample_steps") * unet
        + seeds * trained("downstream", ratio("fr_steps") * fr_pixels)
    )
    return round(seconds / 3600.0, 2)


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"ID3 ablations on parametric faces (recipe {results['recipe']}, seeds {results['seeds']}; "
        "mean +- std over seeds)",
        "",
        "| row | genuine cos (B) | impostor cos (B) | yaw spread (deg, requested) | accuracy | TAR@FAR=1e-3 |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["table"]:
        cells = results["table"][row]

        def cell(key: str, digits: int = 4, cells: dict[str, list[float]] = cells) -> str:
            mean, std = cells[key]
            return f"{mean:.{digits}f} +- {std:.{digits}f}"

        lines.append(
            f"| {row} | {cell('genuine')} | {cell('impostor')} | {cell('attr_spread', 1)} | "
            f"{cell('accuracy')} | {cell('tar@far=1e-3')} |"
        )
    lines += ["", f"timings (s): {results['timings_s']}"]
    if "expected_full_hours" in results:
        lines.append(
            f"expected wall time of the full recipe on this machine: {results['expected_full_hours']} h "
            f"(scaled from this {results['recipe']} run's stage times; training compute s: {results['compute_s']})"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ablation_id3_parametric"))
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="full")
    parser.add_argument(
        "--smoke", action="store_true", help="the smoke recipe (under a minute on an idle 2-core box)"
    )
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="override the recipe's seeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--rows", nargs="+", choices=ROWS, default=None, help="only these rows (default: all); reruns reuse"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = run(args.out, "smoke" if args.smoke else args.recipe, args.threads, args.seeds, args.rows)
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
