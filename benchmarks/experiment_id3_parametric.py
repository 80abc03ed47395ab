"""ID3 on parametric faces, end to end on a CPU: does the identity machinery help, measured independently?

One command runs every stage (all data is rendered by the parametric renderer, nothing is downloaded):

1. render five disjoint parametric identity sets: A (trains encoder A), B (trains encoder B),
   T (ID3 training faces), P (the parametric baseline recognizer's data), E (unseen test identities);
2. train two tiny IResNet recognizers: **A** is the conditioning / loss / guidance encoder f,
   **B** is an independent evaluation encoder never used by ID3 (different identities, different seed);
3. embed T with A and train two ID3 models on it: with the identity term (``lambda_id = 1``) and
   without it (``lambda_id = 0``), same seed, steps and size;
4. **id_cos**: for each unseen identity of E, condition on A's embedding of one source image and
   generate images; id_cos is the cosine between encoder B's embeddings of the generated image and
   of the source image (so it measures identity transfer in a space the generator never saw). Rows:
   the ID3 model with kappa = 0, with kappa > 0, and the model trained without the identity term;
   references: B's cosine between two real renders of the same identity, and generated images
   against *other* identities' sources (impostor level);
5. generate an ID3 dataset with ``facesynth generate --generator id3`` (Tammes anchors in the PCA
   shell of A's embeddings, cosine band, empirical attributes, kappa > 0), train recognizer C on it
   and recognizer D on the same number of parametric-renderer images (set P), and verify both on
   unseen identities E rendered by the parametric renderer (10-fold accuracy and ROC AUC on all
   genuine pairs plus as many impostor pairs).

Results go to OUT/results.json and OUT/results.md. ``--minutes`` scales the training steps linearly
(the data sizes are fixed): 30 gives 300 recognizer steps and 600 ID3 steps per model. Wall time
depends on the machine; on a busy shared 2-core box a step costs several times more than on an idle
one. A short-budget run gives noisier, weaker numbers.

    python -m facesynth.benchmarks.experiment_id3_parametric --minutes 30 --out runs/exp-id3
    python -m facesynth.benchmarks.experiment_id3_parametric --minutes 30 --size 32 --recognizer-size 56  # larger
    python -m facesynth.benchmarks.experiment_id3_parametric --smoke --minutes 0.3 --size 16   # seconds
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
import torch.nn.functional as F

logger = logging.getLogger("facesynth.experiment_id3")

#: identities x images per identity of each rendered set, and its seed
SETS = {
    "enc_a": (60, 12, 101),
    "enc_b": (60, 12, 202),
    "id3_train": (60, 12, 303),
    "param_fr": (40, 10, 404),
    "test": (40, 6, 505),
}
#: steps of each training at --minutes 30 (scaled linearly)
FULL_STEPS = {"recognizer": 300, "id3": 600, "fr_eval": 300}


def render(out: Path, name: str, identities: int, per_identity: int, seed: int) -> Path:
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset

    folder = out / "data" / name
    config = GenerateConfig(
        generator="parametric", identities=identities, per_identity=per_identity, out=folder, seed=seed
    )
    generate_dataset(config, show_progress=False)
    return folder


def train_fr(data: Path, out: Path, steps: int, seed: int, input_size: int, export_onnx: bool = True) -> Path:
    """A tiny IResNet (ArcFace head) trained on ``data``; returns its run folder (torch:RUN loads it)."""
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    config = RecognizerTrainConfig(
        data=[str(data)],
        output_dir=str(out),
        backbone="tiny",
        input_size=input_size,
        batch_size=32,
        max_steps=steps,
        optimizer="adamw",
        lr=2e-3,
        num_workers=0,
        buffer_size=256,
        seed=seed,
        checkpoint_every=0,
        tensorboard=False,
        progress=False,
        export_onnx=export_onnx,
    )
    train_recognizer(config)
    return out


def load_rows(data: Path) -> dict[str, Any]:
    """All images (uint8 N x 112 x 112 x 3), labels and attributes of a rendered set."""
    from facesynth.core.shard_format import decode_image
    from facesynth.core.shard_reader import read_columns

    table = read_columns(data, ["image", "label", "identity", "index", "attributes"])
    images = np.stack([decode_image(cell["bytes"]) for cell in table.column("image").to_pylist()])
    return {
        "images": images,
        "labels": np.asarray(table.column("label").to_pylist()),
        "identity": table.column("identity").to_pylist(),
        "index": table.column("index").to_pylist(),
        "attributes": table.column("attributes").to_pylist(),
    }


@torch.no_grad()
def embed(encoder: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 faces -> unit embeddings, resized to the encoder's input size."""
    from facesynth.generators.id3_loss import embed_for_identity
    from facesynth.recognizers.encoders import images_to_tensor

    out = [
        embed_for_identity(encoder, images_to_tensor(images[i : i + batch]))
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).numpy()


def write_conditioned(rows: dict[str, Any], embeddings: np.ndarray, folder: Path) -> Path:
    """The ID3 training shards: the rendered faces with encoder A's embeddings as the condition."""
    from facesynth.core.manifest import write_shard_dataset as write_dataset
    from facesynth.core.shard_format import ShardRow

    shard_rows = [
        ShardRow(
            image=rows["images"][i],
            label=int(rows["labels"][i]),
            identity=rows["identity"][i],
            index=int(rows["index"][i]),
            embedding=embeddings[i],
            attributes=rows["attributes"][i],
        )
        for i in range(len(rows["labels"]))
    ]
    write_dataset(folder, [shard_rows], embedding_dim=embeddings.shape[1])
    return folder


def train_id3_model(
    data: Path, out: Path, encoder_dir: Path, steps: int, lambda_id: float, size: int, preset: str
) -> Path:
    from facesynth.generators.id3_trainer import ID3TrainConfig, train_id3

    config = ID3TrainConfig(
        data=[str(data)],
        output_dir=str(out),
        image_size=size,
        unet_preset=preset,
        hidden_dims=(256, 256),
        cross_attention_dim=256,
        identity_encoder=f"torch:{encoder_dir}",
        loss={"lambda_id": lambda_id},
        condition_dropout=0.0,
        batch_size=16,
        lr=3e-4,
        lr_warmup_steps=min(50, steps // 10),
        max_steps=steps,
        ema_decay=0.995,
        checkpoint_every=0,
        sample_every=0,
        sample_count=16,
        sample_steps=20,
        log_every=max(1, steps // 20),
        num_workers=0,
        buffer_size=256,
        progress=False,
    )
    return train_id3(config).pipeline_dir


def id_cos_rows(
    pipeline_dir: Path, encoder_a: Any, encoder_b: Any, test: dict[str, Any], kappas: list[float], steps: int
) -> dict[str, dict[str, float]]:
    """Mean B-cosine of generated faces to their source face (and to other identities' sources)."""
    from diffusers import DDIMScheduler

    from facesynth.generators.attributes import attributes_to_array
    from facesynth.generators.id3_pipeline import ID3Pipeline

    pipe = ID3Pipeline.from_pretrained(pipeline_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    labels = test["labels"]
    sources = np.array([np.flatnonzero(labels == label)[0] for label in np.unique(labels)])
    targets = np.array([np.flatnonzero(labels == label)[1:3] for label in np.unique(labels)]).reshape(-1)
    src_of_target = np.repeat(sources, 2)
    y = torch.from_numpy(embed(encoder_a, test["images"][src_of_target]))
    attrs, _ = attributes_to_array([test["attributes"][i] for i in targets])
    attrs = np.clip(attrs, [-90, -90, -90, 0], [90, 90, 90, 100])
    src_b = embed(encoder_b, test["images"][src_of_target])
    results = {}
    for kappa in kappas:
        images = []
        for start in range(0, len(y), 32):
            gens = [torch.Generator().manual_seed(1000 + i) for i in range(start, min(start + 32, len(y)))]
            out = pipe(
                y[start : start + 32],
                attrs[start : start + 32],
                num_inference_steps=steps,
                id_guidance=kappa,
                identity_encoder=encoder_a if kappa > 0 else None,
                generator=gens,
                output_type="pt",
            ).images
            images.append(out)
        pixels = torch.cat(images)
        pixels = F.interpolate(pixels, size=(112, 112), mode="bilinear", antialias=True)
        uint8 = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        gen_b = embed(encoder_b, uint8)
        genuine = np.sum(gen_b * src_b, axis=1)
        impostor = np.sum(gen_b * np.roll(src_b, 2, axis=0), axis=1)
        gen_a = embed(encoder_a, uint8)
        results[f"kappa={kappa:g}"] = {
            "id_cos_B": float(genuine.mean()),
            "impostor_cos_B": float(impostor.mean()),
            "guidance_cos_A": float(np.sum(gen_a * y.numpy(), axis=1).mean()),
            "images": len(uint8),
        }
        if kappa == kappas[-1]:
            from facesynth.generators.id3_trainer import save_grid

            save_grid(
                pixels[:16].permute(0, 2, 3, 1).numpy(), pipeline_dir.parent / f"test_grid_kappa{kappa:g}.png"
            )
    return results


def verification(encoder: Any, test: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """10-fold accuracy and AUC on all genuine pairs of ``test`` plus as many random impostor pairs."""
    from facesynth.recognizers.verification import kfold_accuracy, tar_at_far

    emb = embed(encoder, test["images"])
    labels = test["labels"]
    genuine = [
        (i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]
    ]
    rng = np.random.default_rng(seed)
    impostor = []
    while len(impostor) < len(genuine):
        i, j = rng.integers(0, len(labels), size=2)
        if labels[i] != labels[j]:
            impostor.append((int(i), int(j)))
    pairs = np.array(genuine + impostor)
    issame = np.array([True] * len(genuine) + [False] * len(impostor))
    order = rng.permutation(len(pairs))
    pairs, issame = pairs[order], issame[order]
    sims = np.sum(emb[pairs[:, 0]] * emb[pairs[:, 1]], axis=1)
    accuracy = kfold_accuracy(2 - 2 * sims, issame)
    roc = tar_at_far(sims, issame)
    return {
        "accuracy": accuracy["accuracy"],
        "accuracy_std": accuracy["accuracy_std"],
        "auc": roc["auc"],
        "pairs": int(len(pairs)),
    }


def run(
    out: Path,
    minutes: float,
    kappa: float,
    size: int,
    sample_steps: int,
    threads: int,
    preset: str = "tiny",
    sets: dict[str, tuple[int, int, int]] | None = None,
    fr_input_size: int = 56,
) -> dict[str, Any]:
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset
    from facesynth.recognizers.encoders import load_encoder

    sets = sets or SETS
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    scale = minutes / 30.0
    steps = {k: max(5, int(round(v * scale))) for k, v in FULL_STEPS.items()}
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        logger.info("%s done in %.1f s", name, timings[name])
        return time.perf_counter()

    t = time.perf_counter()
    data = {name: render(out, name, *spec) for name, spec in sets.items()}
    t = lap("render", t)
    enc_a_dir = train_fr(
        data["enc_a"], out / "encoder_A", steps["recognizer"], seed=1, input_size=fr_input_size
    )
    enc_b_dir = train_fr(
        data["enc_b"], out / "encoder_B", steps["recognizer"], seed=2, input_size=fr_input_size
    )
    encoder_a, encoder_b = load_encoder(f"torch:{enc_a_dir}"), load_encoder(f"torch:{enc_b_dir}")
    t = lap("encoders", t)
    train_rows = load_rows(data["id3_train"])
    conditioned = write_conditioned(
        train_rows, embed(encoder_a, train_rows["images"]), out / "data" / "id3_train_A"
    )
    with_id = train_id3_model(conditioned, out / "id3_with_id", enc_a_dir, steps["id3"], 1.0, size, preset)
    t = lap("id3_with_id", t)
    without_id = train_id3_model(
        conditioned, out / "id3_without_id", enc_a_dir, steps["id3"], 0.0, size, preset
    )
    t = lap("id3_without_id", t)

    test = load_rows(data["test"])
    real_b = embed(encoder_b, test["images"])
    same = [
        (i, j)
        for i in range(len(test["labels"]))
        for j in range(i + 1, len(test["labels"]))
        if test["labels"][i] == test["labels"][j]
    ]
    real_genuine = float(np.mean([real_b[i] @ real_b[j] for i, j in same]))
    id_cos = {
        "id3_with_identity_term": id_cos_rows(
            with_id, encoder_a, encoder_b, test, [0.0, kappa], sample_steps
        ),
        "id3_without_identity_term": id_cos_rows(without_id, encoder_a, encoder_b, test, [0.0], sample_steps),
        "real_renders_same_identity_B": real_genuine,
    }
    t = lap("id_cos", t)

    fr_rows = sets["param_fr"][0] * sets["param_fr"][1]
    id3_data = out / "data" / "id3_generated"
    generate_dataset(
        GenerateConfig(
            generator="id3",
            identities=sets["param_fr"][0],
            per_identity=sets["param_fr"][1],
            out=id3_data,
            seed=7,
            options={
                "pipeline": str(with_id),
                "identity_encoder": f"torch:{enc_a_dir}",
                "id_guidance": kappa,
                "num_inference_steps": sample_steps,
                "scheduler": "ddim",
                "reference": [str(conditioned)],
                "subspace_rank": 16,
                "tammes_steps": 100,
                "batch_size": 40,
            },
        ),
        show_progress=False,
    )
    t = lap("generate_id3_dataset", t)
    fr_id3 = load_encoder(
        f"torch:{train_fr(id3_data, out / 'fr_on_id3', steps['fr_eval'], 3, fr_input_size)}"
    )
    fr_param = load_encoder(
        f"torch:{train_fr(data['param_fr'], out / 'fr_on_parametric', steps['fr_eval'], 3, fr_input_size)}"
    )
    fr = {
        "trained_on_id3_dataset": verification(fr_id3, test),
        "trained_on_parametric_renders": verification(fr_param, test),
        "training_images_each": fr_rows,
    }
    lap("recognizers", t)
    timings["total"] = round(time.perf_counter() - started, 1)
    results = {
        "minutes_budget": minutes,
        "steps": steps,
        "kappa": kappa,
        "image_size": size,
        "sample_steps": sample_steps,
        "unet_preset": preset,
        "recognizer_input_size": fr_input_size,
        "sets": {k: {"identities": v[0], "per_identity": v[1], "seed": v[2]} for k, v in sets.items()},
        "id_cos": id_cos,
        "recognizers_verified_on_unseen_parametric_identities": fr,
        "timings_s": timings,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(format_results(results))
    return results


def format_results(results: dict[str, Any]) -> str:
    with_id = results["id_cos"]["id3_with_identity_term"]
    without = results["id_cos"]["id3_without_identity_term"]
    kappa = f"kappa={results['kappa']:g}"
    lines = [
        f"ID3 on parametric faces ({results['minutes_budget']} min budget, steps {results['steps']}, "
        f"{results['image_size']}px, {results['sample_steps']} DDIM steps)",
        "",
        "| generator | id_cos (encoder B) | impostor cos (B) | guidance cos (encoder A) |",
        "|---|---|---|---|",
    ]
    for name, row in [
        ("ID3, kappa = 0", with_id["kappa=0"]),
        (f"ID3, {kappa}", with_id[kappa]),
        ("ID3 without identity term, kappa = 0", without["kappa=0"]),
    ]:
        lines.append(
            f"| {name} | {row['id_cos_B']:.4f} | {row['impostor_cos_B']:.4f} | {row['guidance_cos_A']:.4f} |"
        )
    lines.append(
        f"| real renders, same identity | {results['id_cos']['real_renders_same_identity_B']:.4f} | | |"
    )
    fr = results["recognizers_verified_on_unseen_parametric_identities"]
    lines += [
        "",
        f"Recognizers ({fr['training_images_each']} training images each) verified on unseen parametric identities:",
        "",
        "| training data | accuracy (10-fold) | AUC |",
        "|---|---|---|",
    ]
    for name, key in [
        ("ID3 dataset", "trained_on_id3_dataset"),
        ("parametric renders", "trained_on_parametric_renders"),
    ]:
        row = fr[key]
        lines.append(f"| {name} | {row['accuracy']:.4f} +- {row['accuracy_std']:.4f} | {row['auc']:.4f} |")
    lines += ["", f"timings (s): {results['timings_s']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/experiment_id3_parametric"))
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget scale (30 = full run)")
    parser.add_argument("--kappa", type=float, default=30.0, help="id_guidance for the kappa > 0 rows")
    parser.add_argument("--size", type=int, default=16, help="ID3 image size (pixel space, default 16)")
    parser.add_argument("--sample-steps", type=int, default=20, help="DDIM steps when sampling")
    parser.add_argument("--unet-preset", default="tiny", help="ID3 UNet preset (default tiny)")
    parser.add_argument("--recognizer-size", type=int, default=32, help="recognizer input side (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy box)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sets and models: checks that every stage runs (numbers meaningless)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sets = {name: (8, 4, seed) for name, (_, _, seed) in SETS.items()} if args.smoke else None
    results = run(
        args.out,
        args.minutes,
        args.kappa,
        args.size,
        args.sample_steps,
        args.threads,
        preset="tiny" if args.smoke else args.unet_preset,
        sets=sets,
        fr_input_size=args.recognizer_size,
    )
    print(format_results(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
