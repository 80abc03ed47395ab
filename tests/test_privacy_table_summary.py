"""Seeds of the privacy table averaged into one: the statistics, the verdict count, the recipe guard."""

from __future__ import annotations

import json

import pytest

from facesynth.benchmarks import privacy_table_summary as summary_cli
from facesynth.core.errors import FacesynthError


def _metrics(leakage: float, success: float) -> dict:
    return {
        "psnr": 20.0,
        "ssim": 0.5,
        "identity_leakage": leakage,
        "attack_success": success,
        "reference_tar": 0.6,
    }


def _run(seed: int, dctdp_leak: float, steps: int = 10) -> dict:
    meta = {
        "data": "orl",
        "face_size": 32,
        "backbone": "tiny",
        "steps_per_row": steps,
        "batch_size": 16,
        "lr": 0.1,
        "margin_scale": 64.0,
        "decoder_steps": 5,
        "decoder_widths": [8],
        "far": 0.01,
        "encoder": "e",
        "seed": seed,
        "wall_seconds": 60.0 + seed,
        "torch_threads": 1,
        "verification_pairs": 40,
    }
    floor = _metrics(0.1, 0.0)
    rgb = {"decoder": _metrics(0.9, 0.5), "ridge": _metrics(1.0, 0.6), "no_information": floor}
    dctdp = {"decoder": _metrics(dctdp_leak, 0.2), "ridge": _metrics(0.2, 0.0), "no_information": floor}
    verification = {"accuracy": 0.8 + 0.01 * seed, "seeds": [0, 1, 2]}
    payload = {"values": 100, "float32_bytes": 400, "sent_bytes": 400}
    return {
        "meta": meta,
        "rows": {
            "rgb": {
                "stage_steps": [steps],
                "payload": payload,
                "verification": {**verification, "seeds": []},
                "attack": rgb,
            },
            "dctdp": {
                "stage_steps": [steps],
                "payload": payload,
                "verification": verification,
                "attack": dctdp,
                "multi_query": {"1": dctdp, "4": {**dctdp, "decoder": _metrics(dctdp_leak + 0.1, 0.4)}},
            },
        },
    }


def test_seeds_are_averaged_and_the_verdict_counts_seeds(tmp_path) -> None:
    # seed 2's DCTDP leaks more than RGB's best attacker (1.0): it does not protect on that seed
    folders = []
    for seed, leak in [(0, 0.5), (1, 0.7), (2, 1.2)]:
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        (folder / "privacy_table.json").write_text(json.dumps(_run(seed, leak)), encoding="utf-8")
        folders.append(str(folder))
    assert summary_cli.main([*folders, "--out", str(tmp_path / "all")]) == 0

    summary = json.loads((tmp_path / "all" / "summary.json").read_text(encoding="utf-8"))
    dctdp = summary["rows"]["dctdp"]
    assert dctdp["leakage"]["values"] == pytest.approx([0.5, 0.7, 1.2])  # the stronger attacker per seed
    assert dctdp["leakage"]["mean"] == pytest.approx(0.8)
    assert dctdp["leakage"]["std"] == pytest.approx(0.3605551, abs=1e-6)  # sample std over seeds
    assert dctdp["accuracy"]["mean"] == pytest.approx(0.81)
    assert dctdp["protects_better"] == 2
    assert dctdp["multi_query"]["4"]["leakage"]["mean"] == pytest.approx(0.9)
    assert dctdp["multi_query"]["4"]["success"]["mean"] == pytest.approx(0.4)
    table = (tmp_path / "all" / "summary.md").read_text(encoding="utf-8")
    assert "| dctdp |" in table and "2 of 3" in table and "| k = 1 | k = 4 |" in table
    assert (tmp_path / "all" / "attack_vs_k.png").stat().st_size > 1000


def test_runs_of_different_recipes_are_refused() -> None:
    with pytest.raises(FacesynthError, match="steps_per_row"):
        summary_cli.summarize([_run(0, 0.5), _run(1, 0.5, steps=20)])
    with pytest.raises(FacesynthError, match="repeat a seed"):
        summary_cli.summarize([_run(0, 0.5), _run(0, 0.5)])


def test_a_missing_seed_run_is_named(tmp_path, capsys) -> None:
    assert summary_cli.main([str(tmp_path / "seed-9"), "--out", str(tmp_path / "all")]) == 2
    assert "seed-9" in capsys.readouterr().err
