"""Several seeds of the privacy table as one: mean ± std per row, and the attack-vs-k curves.

Each seed is one :mod:`facesynth.benchmarks.privacy_table` run (``--seed N``: its own models, its own
attacker, and on parametric data its own faces). The runs must share the recipe (every setting but
the seed, the wall time and the thread count), else the summary refuses to average them::

    for seed in 0 1 2; do
        python -m facesynth.benchmarks.privacy_table --data orl --size 32 --seed $seed \\
            --out runs/privacy-orl/seed-$seed
    done
    python -m facesynth.benchmarks.privacy_table_summary runs/privacy-orl/seed-* --out runs/privacy-orl

Writes ``summary.md`` (the table, mean ± std over seeds, sample std), ``summary.json`` (the
per-seed values behind every cell) and ``attack_vs_k.png`` (identity leakage and attack success
against the number k of payloads the attacker holds of each face, RGB and the no-information floor
as reference lines). Attack columns take the stronger of the two attackers on each seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.benchmarks.privacy_table import best_attack, protects_better_than_rgb
from facesynth.core.errors import FacesynthError

#: settings that may differ between the seeds of one table
PER_RUN = frozenset({"seed", "wall_seconds", "torch_threads"})
#: settings that follow from the seed's data draw (parametric faces differ per seed; the counts do not)
DERIVED = frozenset({"verification_pairs"})


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """The ``privacy_table.json`` of each run folder (or the file itself), in the order given."""
    runs = []
    for path in paths:
        file = path / "privacy_table.json" if path.is_dir() else path
        if not file.is_file():
            raise FacesynthError(f"{path}: no privacy_table.json (did that seed's run finish?)")
        runs.append(json.loads(file.read_text(encoding="utf-8")))
    if not runs:
        raise FacesynthError("no runs to summarise")
    return runs


def check_same_recipe(runs: list[dict[str, Any]]) -> None:
    """Refuse to average runs whose recipes differ, naming the first setting that does."""
    first = runs[0]["meta"]
    seeds = [run["meta"].get("seed") for run in runs]
    if len(set(seeds)) != len(seeds):
        raise FacesynthError(f"the runs repeat a seed: {seeds}")
    for run in runs[1:]:
        meta = run["meta"]
        for key in sorted((set(first) | set(meta)) - PER_RUN - DERIVED):
            if first.get(key) != meta.get(key):
                raise FacesynthError(
                    f"seed {meta.get('seed')} differs from seed {first.get('seed')} in {key!r}: "
                    f"{meta.get(key)!r} vs {first.get(key)!r}; a summary averages one recipe"
                )
        if list(run["rows"]) != list(runs[0]["rows"]):
            raise FacesynthError(
                f"seed {meta.get('seed')} has rows {list(run['rows'])}, not {list(runs[0]['rows'])}"
            )


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row and per k: the per-seed values and their mean ± std."""
    check_same_recipe(runs)
    rows: dict[str, Any] = {}
    for name in runs[0]["rows"]:
        per_seed = [run["rows"][name] for run in runs]
        best = [best_attack(r["attack"]) for r in per_seed]
        entry: dict[str, Any] = {
            "stage_steps": per_seed[0]["stage_steps"],
            "payload": per_seed[0]["payload"],
            "accuracy": _stats([r["verification"]["accuracy"] for r in per_seed]),
            "randomised": bool(per_seed[0]["verification"]["seeds"]),
            "decoder_psnr": _stats([r["attack"]["decoder"]["psnr"] for r in per_seed]),
            "decoder_ssim": _stats([r["attack"]["decoder"]["ssim"] for r in per_seed]),
            "leakage": _stats([b[0] for b in best]),
            "success": _stats([b[1] for b in best]),
        }
        if name != "rgb" and "rgb" in runs[0]["rows"]:
            entry["protects_better"] = sum(
                protects_better_than_rgb(r["attack"], run["rows"]["rgb"]["attack"])
                for r, run in zip(per_seed, runs, strict=True)
            )
        multi = [r.get("multi_query") for r in per_seed]
        if all(multi):
            entry["multi_query"] = {
                k: {
                    "leakage": _stats([best_attack(m[k])[0] for m in multi]),
                    "success": _stats([best_attack(m[k])[1] for m in multi]),
                }
                for k in multi[0]
            }
        rows[name] = entry
    floor = [next(iter(run["rows"].values()))["attack"]["no_information"] for run in runs]
    return {
        "meta": {k: v for k, v in runs[0]["meta"].items() if k not in PER_RUN | DERIVED},
        "seeds": [run["meta"]["seed"] for run in runs],
        "wall_seconds": [run["meta"]["wall_seconds"] for run in runs],
        "verification_pairs": [run["meta"]["verification_pairs"] for run in runs],
        "rows": rows,
        "floor": {
            "leakage": _stats([f["identity_leakage"] for f in floor]),
            "success": _stats([f["attack_success"] for f in floor]),
            "psnr": _stats([f["psnr"] for f in floor]),
            "reference_tar": _stats([f["reference_tar"] for f in floor]),
        },
    }


def _pm(stats: dict[str, Any], digits: int = 3) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def markdown(summary: dict[str, Any]) -> str:
    """The seed-averaged comparison table and the attack-vs-k table."""
    meta, n = summary["meta"], len(summary["seeds"])
    lines = [
        f"Privacy comparison ({meta['data']}, {meta.get('face_size', 112)} px faces, seeds "
        f"{summary['seeds']}, mean ± std over seeds; backbone {meta['backbone']}, {meta['steps_per_row']} "
        f"training steps per row (two-stage rows split them), batch {meta['batch_size']}, lr {meta['lr']}, "
        f"ArcFace s {meta['margin_scale']:g}; attack decoder {meta['decoder_steps']} steps, widths "
        f"{meta['decoder_widths']}; success at FAR {meta['far']:g}; identity encoder: {meta['encoder']}; "
        f"wall {sum(summary['wall_seconds']) / 60:.0f} min for all seeds)",
        "",
        "| method | stages (steps) | verification acc | values / query | bytes sent | decoder PSNR (dB) "
        "| identity leakage | attack success | protects better than RGB (seeds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["rows"].items():
        verdict = "(baseline)" if name == "rgb" else f"{row.get('protects_better', 0)} of {n}"
        lines.append(
            f"| {name} | {len(row['stage_steps'])} ({'+'.join(map(str, row['stage_steps']))}) | "
            f"{_pm(row['accuracy'])} | {row['payload']['values']:,} | {row['payload']['sent_bytes']:,} | "
            f"{_pm(row['decoder_psnr'], 1)} | {_pm(row['leakage'])} | {_pm(row['success'])} | {verdict} |"
        )
    floor = summary["floor"]
    lines.append(
        f"| no-information floor | - | - | 0 | 0 | {_pm(floor['psnr'], 1)} | {_pm(floor['leakage'])} | "
        f"{_pm(floor['success'])} | - |"
    )
    lines += [
        "",
        f"Verification pairs per seed: {summary['verification_pairs']}, over identities no model saw. "
        f"Original victim faces that verify at that FAR: {_pm(floor['reference_tar'])}.",
    ]
    multi = {name: row["multi_query"] for name, row in summary["rows"].items() if "multi_query" in row}
    if multi:
        ks = sorted({int(k) for by_k in multi.values() for k in by_k})
        lines += [
            "",
            "Attack vs k (the attacker holds k payloads of each face), identity leakage / attack success:",
            "",
            "| method | " + " | ".join(f"k = {k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for name, by_k in multi.items():
            cells = [
                f"{_pm(by_k[str(k)]['leakage'])} / {_pm(by_k[str(k)]['success'])}"
                if str(k) in by_k
                else "n/a"
                for k in ks
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_attack_vs_k(summary: dict[str, Any], path: Path) -> Path:
    """Leakage and success against k per randomised method; RGB and the floor as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    multi = {name: row["multi_query"] for name, row in summary["rows"].items() if "multi_query" in row}
    if not multi:
        raise FacesynthError("no multi-query attacks in these runs (--multi-query-ks was empty)")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in zip(
        axes, ("leakage", "success"), ("identity leakage", "attack success"), strict=True
    ):
        for name, by_k in multi.items():
            ks = sorted(int(k) for k in by_k)
            means = [by_k[str(k)][key]["mean"] for k in ks]
            stds = [by_k[str(k)][key]["std"] for k in ks]
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=name)
        rgb = summary["rows"].get("rgb")
        if rgb is not None:
            ax.axhline(rgb[key]["mean"], color="black", linestyle="--", linewidth=1, label="RGB (k = 1)")
        ax.axhline(
            summary["floor"][key]["mean"], color="grey", linestyle=":", linewidth=1, label="no information"
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("payloads per face held by the attacker (k)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    meta = summary["meta"]
    fig.suptitle(f"{meta['data']}: attack vs k, mean ± std over seeds {summary['seeds']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="privacy_table run folders (or their JSON), one per seed"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for summary.md, summary.json, attack_vs_k.png"
    )
    args = parser.parse_args(argv)
    try:
        summary = summarize(load_runs(args.runs))
    except FacesynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    table = markdown(summary)
    (args.out / "summary.md").write_text(table, encoding="utf-8")
    if any("multi_query" in row for row in summary["rows"].values()):
        plot_attack_vs_k(summary, args.out / "attack_vs_k.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
