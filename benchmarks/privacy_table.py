"""The privacy comparison table: RGB baseline, DCTDP, DuetFace, PartialFace, MinusFace, one recipe.

Every row is trained by the one recognizer trainer with the same backbone, batch size, optimiser,
learning rate, seed and the same *total* number of training steps (``--steps``) on the same
identities; DuetFace and MinusFace have two stages each, as in TFace, and split the row's steps
(``--first-stage-fraction``, default half each; the table shows the split). Every row is then
evaluated the same way on identities no recognizer saw:

- verification accuracy (10-fold protocol of :mod:`facesynth.recognizers.verification`, no flip
  TTA) on pairs of the victim identities' images (:func:`facesynth.pipelines.pairs.verification_set_from_shards`),
  unseen by every recognizer and by the attacker. Privacy rows go through the deployed path,
  protect -> recognize with every image protected independently
  (:func:`facesynth.privacy.evaluation.evaluate_privacy_method`, what ``facesynth bench --privacy``
  runs); randomised methods report mean +- std over ``--query-seeds`` (at least 3), deterministic
  ones one run. DuetFace gets each face's own landmarks where the data has them (parametric faces);
- payload per query: its number of values, the same as float32 bytes (one dtype for every row), and
  the bytes a deployment sends (RGB: the uint8 image; protected rows: what ``protect`` returns);
- the white-box recovery attack of :mod:`facesynth.privacy.attacks` (U-Net decoder and ridge
  inverse trained on the public identities, tested on the victim identities): PSNR, SSIM, identity
  leakage and attack success at a fixed FAR, scored by an identity encoder independent of every
  protected model (the RGB row's recognizer unless ``--encoder`` names another). Success is shown
  next to its share of the fraction of *original* victim faces that verify at that FAR (capped at
  1), and the no-information floor (the public mean face for every victim) is a row of its own;
- for the randomised rows, multi-query attacks (:mod:`facesynth.privacy.multi_query`): the attacker
  holds k payloads of each face (``--multi-query-ks``, default 1 4 16), leakage and success per k.

A method whose best attacker leaks at least as much identity as on the RGB baseline is marked "no"
under "protects better than RGB"; nothing is dropped from the table.

Data: ``--data orl`` (ORL faces from ../shared/datasets, grey 92 x 112 padded to 112 x 112, 40
identities: 20 train, 10 attacker-public, 10 victims) or
``--data parametric`` (the parametric renderer; identities split 50/25/25 the same way).
``--size`` sets the side every model and attack works at (112 by default; the shards stay 112 px
aligned faces, the trainer and the encoders resize them, the attacks get what a client at that
size sends). One run is one seed; :mod:`facesynth.benchmarks.privacy_table_summary` averages seeds.

    python -m facesynth.benchmarks.privacy_table --data orl --minutes 12   # a quick look
    # the README's 3-seed tables (32 px; about 16 min per seed and dataset on one thread of this
    # project's 2-core CPU, the two datasets side by side; the attack decoder trains 300 steps on
    # 4 payload draws per public face, a CPU budget short of its plateau):
    common="--size 32 --steps 300 --max-pairs 400 --decoder-steps 300 --decoder-widths 16 32 64 \
        --view-draws 4 --threads 1"
    for seed in 0 1 2; do
        python -m facesynth.benchmarks.privacy_table --data orl $common --max-public 100 \
            --max-victims 100 --seed $seed --out runs/privacy-orl/seed-$seed
        python -m facesynth.benchmarks.privacy_table --data parametric $common --identities 80 \
            --per-identity 10 --margin-scale 16 --max-public 120 --max-victims 120 --seed $seed \
            --out runs/privacy-parametric/seed-$seed
    done
    python -m facesynth.benchmarks.privacy_table_summary runs/privacy-orl/seed-* --out runs/privacy-orl
    python -m facesynth.benchmarks.privacy_table_summary runs/privacy-parametric/seed-* \
        --out runs/privacy-parametric

``--minutes`` sets the per-row step count from a quick timing of each method (a short-budget run:
the numbers show the harness working, not converged models); ``--steps`` fixes it instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("facesynth.benchmarks.privacy_table")

ROWS = ("rgb", "dctdp", "duetface", "partialface", "minusface")
# stages per row: (method name, method options); later stages get the previous run via *_from
STAGES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "rgb": [("plain", {})],
    "dctdp": [("dctdp", {})],
    "duetface": [("duetface", {"stage": "client"}), ("duetface", {"stage": "server"})],
    "partialface": [("partialface", {})],
    "minusface": [("minusface", {"stage": 1}), ("minusface", {"stage": 2})],
}
SMALL_OPTIONS = {
    "duetface": {"client_widths": [16, 16, 32, 32, 64]},
    "minusface": {"generator_widths": [16, 32, 64]},
}
SHARED = Path(
    os.environ.get(
        "FACESYNTH_SHARED_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    )
)


# ------------------------------------------------------------------------------------------------
# data


def _pad_to_square(grey: np.ndarray, size: int = 112) -> np.ndarray:
    from PIL import Image

    h, w = grey.shape
    scale = size / max(h, w)
    img = Image.fromarray(grey).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    canvas = np.full((size, size), int(np.median(grey)), dtype=np.uint8)
    arr = np.asarray(img)
    y0, x0 = (size - arr.shape[0]) // 2, (size - arr.shape[1]) // 2
    canvas[y0 : y0 + arr.shape[0], x0 : x0 + arr.shape[1]] = arr
    return np.repeat(canvas[:, :, None], 3, axis=2)


# a face: (identity, HxWx3 uint8 image, (5, 2) landmarks on the crop or None where unknown)
Face = tuple[str, np.ndarray, "np.ndarray | None"]


def orl_faces(root: Path) -> list[Face]:
    from PIL import Image

    if not root.is_dir():
        raise SystemExit(f"ORL faces not found at {root}")
    out = []
    for folder in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.pgm"), key=lambda p: (len(p.name), p.name)):
            with Image.open(file) as img:
                out.append((folder.name, _pad_to_square(np.asarray(img.convert("L"))), None))
    return out


def parametric_faces(identities: int, per_identity: int, seed: int) -> list[Face]:
    from facesynth.generators.registry import SampleRequest, build_generator, sample_seed

    gen = build_generator("parametric", num_identities=identities, seed=seed)
    requests = [
        SampleRequest(lab, idx, sample_seed(seed, lab, idx))
        for lab in range(identities)
        for idx in range(per_identity)
    ]
    out = []
    for start in range(0, len(requests), 64):
        chunk = requests[start : start + 64]
        for req, face in zip(chunk, gen.generate(chunk), strict=True):
            out.append((f"p{req.label:05d}", face.image, face.landmarks))
    return out


def resize_face_set(faces: list[Face], size: int) -> list[Face]:
    """The attack's faces at ``size`` x ``size``, as the client sends them, landmarks moved with them.

    Resized as the trainer resizes (:func:`~facesynth.recognizers.encoders.resize_faces`), then
    rounded to uint8: what a client at that input size would send.
    """
    from facesynth.core.shard_reader import image_to_tensor
    from facesynth.recognizers.encoders import resize_faces, resize_landmarks

    out = []
    for name, image, landmarks in faces:
        h, w = image.shape[:2]
        if (h, w) != (size, size):
            small = resize_faces(image_to_tensor(image)[None], (size, size))[0]
            image = ((small.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            if landmarks is not None:
                landmarks = resize_landmarks(torch.as_tensor(landmarks), (h, w), (size, size)).numpy()
        out.append((name, image, landmarks))
    return out


def write_split(faces: list[Face], folder: Path) -> Path:
    """One shard of the faces and its manifest (with the landmarks column when the faces have landmarks)."""
    from facesynth.core.manifest import write_shard_dataset as write_dataset
    from facesynth.core.shard_format import ShardRow

    names = sorted({f[0] for f in faces})
    label = {n: i for i, n in enumerate(names)}
    counts: dict[str, int] = {}
    rows = []
    for name, image, landmarks in faces:
        rows.append(
            ShardRow(
                image=image, label=label[name], identity=name, index=counts.get(name, 0), landmarks=landmarks
            )
        )
        counts[name] = counts.get(name, 0) + 1
    write_dataset(folder, [rows])
    return folder


def split_identities(faces, fractions=(0.5, 0.25)):
    names = sorted({f[0] for f in faces}, key=lambda s: (len(s), s))
    n_train = round(fractions[0] * len(names))
    n_public = round(fractions[1] * len(names))
    groups = {
        "train": set(names[:n_train]),
        "public": set(names[n_train : n_train + n_public]),
        "victims": set(names[n_train + n_public :]),
    }
    return {k: [f for f in faces if f[0] in v] for k, v in groups.items()}


def to_tensor(faces) -> tuple[torch.Tensor, list[str]]:
    from facesynth.core.shard_reader import image_to_tensor

    return torch.stack([image_to_tensor(f[1]) for f in faces]), [f[0] for f in faces]


def landmarks_tensor(faces: list[Face]) -> torch.Tensor | None:
    """(N, 5, 2) landmarks of the faces (NaN where unknown), or None when no face has any."""
    if all(f[2] is None for f in faces):
        return None
    unknown = np.full((5, 2), np.nan, np.float32)
    return torch.from_numpy(
        np.stack([unknown if f[2] is None else np.asarray(f[2], np.float32) for f in faces])
    )


# ------------------------------------------------------------------------------------------------
# evaluation


def _cap(faces: list[Face], limit: int, seed: int) -> list[Face]:
    """At most ``limit`` faces, the same number from every identity where possible (seeded)."""
    if len(faces) <= limit:
        return faces
    names = sorted({f[0] for f in faces})
    per = max(2, limit // len(names))
    rng = np.random.default_rng(seed)
    keep = []
    for name in names:
        idx = [i for i, f in enumerate(faces) if f[0] == name]
        keep += rng.choice(idx, size=min(per, len(idx)), replace=False).tolist()
    return [faces[i] for i in sorted(keep)]


def verify(model, victims_dir: Path, args) -> dict[str, Any]:
    """Verification on the victims' pairs: RGB through its backbone, privacy rows protect -> recognize."""
    from facesynth.pipelines.pairs import verification_set_from_shards
    from facesynth.privacy.api import PrivacyMethod
    from facesynth.privacy.evaluation import evaluate_privacy_method
    from facesynth.recognizers.encoders import TorchEncoder
    from facesynth.recognizers.verification import evaluate_benchmark

    pairs = verification_set_from_shards(
        victims_dir, num_pairs=args.max_pairs, seed=args.seed, name="victims"
    )
    if isinstance(model, PrivacyMethod):
        report = evaluate_privacy_method(model, [pairs], seeds=args.query_seeds, batch_size=32, flip=False)
        summary = report["summary"][0]
        return {
            "accuracy": summary["accuracy"]["mean"],
            "seed_std": summary["accuracy"]["std"],
            "fold_std": summary["fold_std"],
            "seeds": report["seeds"],
            "num_pairs": summary["num_pairs"],
        }
    result = evaluate_benchmark(
        TorchEncoder(model.backbone, description="rgb"), pairs, batch_size=32, flip=False
    )
    return {
        "accuracy": result["accuracy"],
        "seed_std": 0.0,
        "fold_std": result["accuracy_std"],
        "seeds": [],
        "num_pairs": result["num_pairs"],
    }


def payload_sizes(method, image: torch.Tensor) -> dict[str, int]:
    """One query's payload: values (tensor + extras), their size as float32, and the bytes a deployment
    sends (RGB: the uint8 image; protected rows: the payload in the dtype ``protect`` returns)."""
    if method is None:
        values = int(image[0].numel())
        return {"values": values, "float32_bytes": 4 * values, "sent_bytes": values}
    payload = method.protect(image[:1], seed=0)
    values = int(payload.tensor.numel() + sum(v.numel() for v in payload.extras.values()))
    return {"values": values, "float32_bytes": 4 * values, "sent_bytes": int(payload.nbytes)}


def stage_steps(row: str, total: int, first_fraction: float) -> list[int]:
    """Split a row's total training steps over its stages (same total for every row)."""
    if len(STAGES[row]) == 1:
        return [total]
    first = max(1, int(round(total * first_fraction)))
    return [first, max(1, total - first)]


# ------------------------------------------------------------------------------------------------
# training


def train_stage(method_name: str, options: dict[str, Any], data: Path, out: Path, args, steps: int):
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    config = RecognizerTrainConfig(
        data=[str(data)],
        output_dir=str(out),
        backbone=args.backbone,
        method=method_name,
        method_kwargs=options,
        batch_size=args.batch_size,
        max_steps=steps,
        lr=args.lr,
        margin_scale=args.margin_scale,
        input_size=args.size,
        num_workers=0,
        progress=False,
        tensorboard=False,
        checkpoint_every=0,
        seed=args.seed,
        log_every=max(1, steps // 5),
    )
    return train_recognizer(config)


def time_step(method_name: str, options: dict[str, Any], args, images: torch.Tensor) -> float:
    """Seconds of one training forward + backward at the run's batch size (for --minutes)."""
    from facesynth.privacy.api import build_privacy_method
    from facesynth.recognizers.methods import build_method

    build = build_privacy_method if method_name != "plain" else build_method
    opts = {k: v for k, v in options.items() if not k.endswith("_from")}
    size = [args.size, args.size]
    method = build(method_name, args.backbone, {"input_size": size}, **opts).train()
    batch = images[: args.batch_size]
    labels = torch.arange(batch.shape[0]) % 4
    start = time.perf_counter()
    emb, aux = method(batch, labels)
    (emb.pow(2).mean() + sum(aux.values(), torch.zeros(()))).backward()
    return time.perf_counter() - start


def row_options(row: str, stage: int, options: dict[str, Any], previous: Path | None, args) -> dict[str, Any]:
    opts = {**options, **(SMALL_OPTIONS.get(row, {}) if args.small_clients else {})}
    if previous is not None and row == "duetface":
        opts["client_from"] = str(previous)
    if previous is not None and row == "minusface":
        opts["stage1_from"] = str(previous)
    return opts


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["orl", "parametric"], default="orl")
    parser.add_argument("--identities", type=int, default=80, help="parametric: identities rendered")
    parser.add_argument("--per-identity", type=int, default=8, help="parametric: images per identity")
    parser.add_argument("--minutes", type=float, default=12.0, help="total wall budget used to pick --steps")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps per row, all stages together (overrides --minutes)",
    )
    parser.add_argument(
        "--first-stage-fraction",
        type=float,
        default=0.5,
        help="two-stage rows: share of the row's steps for stage 1 (TFace trains both stages equally long)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=112,
        help="face side in pixels for every model and attack (112: the papers'; 32 keeps a CPU run short)",
    )
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--margin-scale",
        type=float,
        default=64.0,
        help="ArcFace s (64 as arcface_torch; 16 suits tens of classes)",
    )
    parser.add_argument(
        "--decoder-steps",
        type=int,
        default=None,
        help="attack decoder steps (default: DecoderConfig's with --steps, else from the budget)",
    )
    parser.add_argument(
        "--decoder-widths", type=int, nargs="+", default=None, help="default: DecoderConfig's"
    )
    parser.add_argument(
        "--multi-query-ks",
        type=int,
        nargs="*",
        default=[1, 4, 16],
        help="randomised rows: attack with k payloads of each face, for each k (none: skip)",
    )
    parser.add_argument(
        "--view-draws",
        type=int,
        default=None,
        help="payloads drawn once per public face for the attack decoder (default: fresh at every step; "
        "a k-query view costs k client calls per step, which a CPU cannot afford at k = 16)",
    )
    parser.add_argument("--ridge-kernel", type=int, default=1)
    parser.add_argument("--far", type=float, default=1e-2)
    parser.add_argument(
        "--max-public", type=int, default=48, help="attacker's public images (short-budget cap)"
    )
    parser.add_argument("--max-victims", type=int, default=50, help="victim images (verification and attack)")
    parser.add_argument(
        "--max-pairs", type=int, default=1000, help="verification pairs over the victims (half genuine)"
    )
    parser.add_argument(
        "--query-seeds", type=int, nargs="+", default=[0, 1, 2], help="randomised methods: one run per seed"
    )
    parser.add_argument(
        "--encoder", default=None, help="independent identity encoder (default: the RGB row's model)"
    )
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument(
        "--full-clients",
        dest="small_clients",
        action="store_false",
        help="paper-size DuetFace client / MinusFace U-Net",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/privacy-table"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    wall_start = time.perf_counter()

    import facesynth.privacy  # noqa: F401  (registers the privacy methods)
    from facesynth.pipelines.attack import labels_of
    from facesynth.privacy.api import load_privacy_method
    from facesynth.privacy.attacks import AttackConfig, DecoderConfig, landmarks_by_content, run_attack
    from facesynth.privacy.multi_query import multi_query_attack
    from facesynth.recognizers.methods import load_method

    faces = (
        orl_faces(SHARED / "orl_att_faces" / "orl_faces")
        if args.data == "orl"
        else parametric_faces(args.identities, args.per_identity, args.seed)
    )
    splits = split_identities(faces)
    work = args.out
    train_dir = write_split(splits["train"], work / "data" / "train")
    public_faces = _cap(splits["public"], args.max_public, args.seed)
    victim_faces = _cap(splits["victims"], args.max_victims, args.seed + 1)
    # verification on the victim identities: unseen by every recognizer and by the attacker (aligned
    # 112 px faces in the shard, resized to the models' input by the encoders)
    victims_dir = write_split(victim_faces, work / "data" / "victims")
    # the attacks see what a client at the models' input size sends
    public_faces = resize_face_set(public_faces, args.size)
    victim_faces = resize_face_set(victim_faces, args.size)
    public, public_ids = to_tensor(public_faces)
    victims, victim_ids = to_tensor(victim_faces)
    assert not set(public_ids) & set(victim_ids)
    logger.info(
        "data %s: train %d images / %d ids, public %d / %d, victims %d / %d",
        args.data,
        len(splits["train"]),
        len({f[0] for f in splits["train"]}),
        len(public_ids),
        len(set(public_ids)),
        len(victim_ids),
        len(set(victim_ids)),
    )

    if args.steps is None:
        per_step = [
            time_step(STAGES[r][-1][0], row_options(r, 0, STAGES[r][-1][1], None, args), args, public)
            for r in args.rows
        ]
        # about a third of the budget for training (stage 1 of two-stage rows is heavier ~1.4x, trainer overhead ~1.4x);
        # the rest goes to verification and to the attacks, whose decoder gets as many steps
        budget = args.minutes * 60 * 0.35
        steps = max(5, int(budget / (sum(per_step) * 1.4 * 1.4)))
        logger.info(
            "timed steps %s s; --minutes %.1f -> %d steps per stage",
            [round(t, 2) for t in per_step],
            args.minutes,
            steps,
        )
    else:
        steps = args.steps
    default_decoder = DecoderConfig()
    decoder_steps = args.decoder_steps or (
        default_decoder.steps if args.steps is not None else max(20, steps)
    )
    decoder_widths = list(args.decoder_widths or default_decoder.block_out_channels)

    results: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for row in args.rows:
        previous = None
        t0 = time.perf_counter()
        split = stage_steps(row, steps, args.first_stage_fraction)
        for stage_index, (method_name, options) in enumerate(STAGES[row]):
            out = work / "models" / f"{row}-stage{stage_index + 1}"
            opts = row_options(row, stage_index, options, previous, args)
            train_stage(method_name, opts, train_dir, out, args, split[stage_index])
            previous = out
        models[row] = load_method(previous) if row == "rgb" else load_privacy_method(str(previous))
        results[row] = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "stages": len(STAGES[row]),
            "stage_steps": split,
        }
        logger.info("%s trained in %.0f s", row, results[row]["train_seconds"])

    if args.encoder:
        from facesynth.recognizers.encoders import load_encoder

        encoder = load_encoder(args.encoder)
        encoder_name = args.encoder
    else:
        from facesynth.recognizers.encoders import TorchEncoder

        rgb_model = models.get("rgb")
        if rgb_model is None:
            rgb_model = load_method(work / "models" / "rgb-stage1")
        encoder = TorchEncoder(rgb_model.backbone, description="RGB-row recognizer")
        encoder_name = "the RGB row's recognizer"

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([encoder.embed(x[i : i + 64]) for i in range(0, x.shape[0], 64)])

    attack_config = AttackConfig(
        decoder=DecoderConfig(
            block_out_channels=tuple(decoder_widths),
            steps=decoder_steps,
            batch_size=args.batch_size,
            seed=args.seed,
        ),
        ridge_kernel=args.ridge_kernel,
        ridge_positions=256,
        far=args.far,
        batch_size=args.batch_size,
        scale_batches=1,
        view_draws=args.view_draws,
    )
    landmarks = landmarks_tensor(public_faces + victim_faces)
    landmarks_of = (
        None if landmarks is None else landmarks_by_content(torch.cat([public, victims]), landmarks)
    )
    for row in args.rows:
        method = models[row]
        t0 = time.perf_counter()
        results[row]["verification"] = verify(method, victims_dir, args)
        sizes = payload_sizes(None if row == "rgb" else method, victims)
        results[row]["payload"] = sizes
        results[row]["payload_bytes"] = sizes["sent_bytes"]
        if row == "rgb":

            def protect(images, seed):
                return images
        else:

            def protect(images, seed, method=method):
                landmarks = None if landmarks_of is None else landmarks_of(images)
                return method.protect(images, seed=seed, landmarks=landmarks)

        metrics, _, _ = run_attack(
            protect, public, victims, labels_of(victim_ids), attack_config, embed=embed, progress=False
        )
        metrics.pop("view")
        results[row]["attack"] = metrics
        if row != "rgb" and method.randomised and args.multi_query_ks:
            report = multi_query_attack(
                method,
                public,
                victims,
                labels_of(victim_ids),
                attack_config,
                args.multi_query_ks,
                embed,
                single_query=metrics,
            )
            results[row]["multi_query"] = {
                k: {name: m for name, m in by.items() if name != "view"} for k, by in report["by_k"].items()
            }
        results[row]["eval_seconds"] = round(time.perf_counter() - t0, 1)
        logger.info("%s evaluated in %.0f s", row, results[row]["eval_seconds"])

    meta = {
        "data": args.data,
        "train_images": len(splits["train"]),
        "train_identities": len({f[0] for f in splits["train"]}),
        "public_images": len(public_ids),
        "victim_images": len(victim_ids),
        "victim_identities": len(set(victim_ids)),
        "verification_identities": len(set(victim_ids)),
        "verification_pairs": results[args.rows[0]]["verification"]["num_pairs"],
        "query_seeds": args.query_seeds,
        "backbone": args.backbone,
        "face_size": args.size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "margin_scale": args.margin_scale,
        "steps_per_row": steps,
        "first_stage_fraction": args.first_stage_fraction,
        "decoder_steps": decoder_steps,
        "decoder_widths": decoder_widths,
        "decoder_lr": attack_config.decoder.lr,
        "decoder_lr_schedule": attack_config.decoder.lr_schedule,
        "multi_query_ks": args.multi_query_ks,
        "view_draws": args.view_draws,
        "ridge_kernel": args.ridge_kernel,
        "far": args.far,
        "encoder": encoder_name,
        "small_clients": args.small_clients,
        "seed": args.seed,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "torch_threads": args.threads,
    }
    table = markdown_table(results, meta)
    work.mkdir(parents=True, exist_ok=True)
    (work / "privacy_table.json").write_text(
        json.dumps({"meta": meta, "rows": results}, indent=2), encoding="utf-8"
    )
    (work / "privacy_table.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


def best_attack(metrics: dict[str, Any]) -> tuple[float, float]:
    """(identity leakage, attack success) of the stronger attacker in each, the floor left out."""
    attackers = [m for k, m in metrics.items() if k != "no_information"]
    return (
        max(m.get("identity_leakage", float("nan")) for m in attackers),
        max(m.get("attack_success", float("nan")) for m in attackers),
    )


def protects_better_than_rgb(attack: dict[str, Any], rgb_attack: dict[str, Any]) -> bool:
    """The row's best attacker leaks less identity than on RGB and succeeds no more often."""
    leak, success = best_attack(attack)
    rgb_leak, rgb_success = best_attack(rgb_attack)
    return leak < rgb_leak and success <= rgb_success


def _success(m: dict[str, Any], reference: float) -> str:
    """Attack success next to its share of what the originals reach (capped at 1)."""
    if "attack_success" not in m:
        return "n/a"
    success = m["attack_success"]
    if not reference or not np.isfinite(reference) or reference <= 0:
        return f"{success:.3f}"
    return f"{success:.3f} ({min(1.0, success / reference):.2f})"


def markdown_table(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The comparison table, the no-information floor as its own row, and the attack-vs-k table."""
    steps = meta.get("steps_per_row", meta.get("steps_per_stage"))
    head = (
        "| method | stages (steps) | verification acc (seeds) | payload values/query | as float32 | bytes sent "
        "| decoder PSNR / SSIM | decoder leakage | decoder success (of originals') "
        "| ridge PSNR / SSIM | ridge leakage | ridge success (of originals') | protects better than RGB |"
    )
    lines = [
        f"Privacy comparison ({meta['data']}, {meta.get('face_size', 112)} px faces, backbone {meta['backbone']}, {steps} training steps per row "
        f"(two-stage rows split them), batch {meta['batch_size']}, lr {meta['lr']}, ArcFace s "
        f"{meta.get('margin_scale', 64.0):g}; attack decoder {meta['decoder_steps']} steps, widths "
        f"{meta.get('decoder_widths', 'n/a')}, lr {meta.get('decoder_lr', 'n/a')} "
        f"{meta.get('decoder_lr_schedule', '')}; success at FAR {meta['far']:g}; identity encoder: "
        f"{meta['encoder']}; wall {meta['wall_seconds']:.0f} s)",
        "",
        head,
        "|" + "---|" * 13,
    ]
    rgb = results.get("rgb")
    noinfo = next(iter(results.values()))["attack"]["no_information"]
    reference = noinfo.get("reference_tar", float("nan"))

    def f(m, k, fmt="{:.3f}"):
        return fmt.format(m[k]) if k in m else "n/a"

    def quality(m):
        return f"{f(m, 'psnr', '{:.2f}')} / {f(m, 'ssim')}" if m else "n/a"

    for row, r in results.items():
        dec, rid = r["attack"]["decoder"], r["attack"].get("ridge", {})
        v = r["verification"]
        if row == "rgb" or rgb is None:
            verdict = "(baseline)" if row == "rgb" else "n/a"
        else:
            verdict = "yes" if protects_better_than_rgb(r["attack"], rgb["attack"]) else "**no**"
        size = r.get("payload", {"values": None, "float32_bytes": None, "sent_bytes": r["payload_bytes"]})
        values = "n/a" if size["values"] is None else f"{size['values']:,}"
        as_f32 = "n/a" if size["float32_bytes"] is None else f"{size['float32_bytes']:,}"
        acc = f"{v['accuracy']:.3f} ± {v['seed_std']:.3f}" if v["seeds"] else f"{v['accuracy']:.3f} (det.)"
        split = "+".join(str(x) for x in r.get("stage_steps", [])) or "?"
        lines.append(
            f"| {row} | {r['stages']} ({split}) | {acc} | {values} | {as_f32} | {size['sent_bytes']:,} | "
            f"{quality(dec)} | {f(dec, 'identity_leakage')} | {_success(dec, reference)} | "
            f"{quality(rid)} | {f(rid, 'identity_leakage')} | {_success(rid, reference)} | {verdict} |"
        )
    lines.append(
        f"| no-information floor | - | - | 0 | 0 | 0 | {quality(noinfo)} | {f(noinfo, 'identity_leakage')} | "
        f"{_success(noinfo, reference)} | - | - | - | - |"
    )
    lines += [
        "",
        f"Verification: {meta['verification_pairs']} pairs over {meta['verification_identities']} unseen identities; "
        f"randomised methods mean ± std over query seeds {meta['query_seeds']}, deterministic ones (det.) one run. "
        "Payload: values per query (tensor + extras), the same values as float32, and the bytes a deployment "
        "sends (RGB: the uint8 image; protected rows: float32 tensors and masks, as protect() returns them). "
        "No-information floor: the public mean face for every victim. "
        f"Success in parentheses: its share of the {reference:.3f} of original victim faces that verify at "
        "that FAR (capped at 1).",
    ]
    multi = {row: r["multi_query"] for row, r in results.items() if r.get("multi_query")}
    if multi:
        ks = sorted({int(k) for m in multi.values() for k in m})
        lines += [
            "",
            "Multi-query attacks (the attacker holds k payloads of each face: DCTDP and MinusFace averaged, "
            "PartialFace subsets united; best of the two attackers): identity leakage / attack success",
            "",
            "| method | " + " | ".join(f"k = {k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for row, by_k in multi.items():
            cells = []
            for k in ks:
                m = by_k.get(str(k))
                if m is None:
                    cells.append("n/a")
                    continue
                leak, success = best_attack(m)
                cells.append(f"{leak:.3f} / {success:.3f}")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
