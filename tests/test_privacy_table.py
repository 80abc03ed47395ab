"""The privacy comparison script: one recipe end to end on tiny data, and the table's protection verdict."""

from __future__ import annotations

import json

import pytest
import torch

from facesynth.benchmarks import privacy_table


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # main() sets its --threads for the whole process
    yield
    torch.set_num_threads(threads)


def test_table_runs_end_to_end_on_parametric_faces(tmp_path) -> None:
    out = tmp_path / "table"
    args = ["--data", "parametric", "--identities", "8", "--per-identity", "4", "--steps", "2"]
    args += ["--decoder-steps", "2", "--batch-size", "8", "--rows", "rgb", "partialface"]
    args += ["--max-pairs", "20", "--threads", "1", "--out", str(out)]
    assert privacy_table.main(args) == 0

    report = json.loads((out / "privacy_table.json").read_text(encoding="utf-8"))
    meta, rows = report["meta"], report["rows"]
    assert set(rows) == {"rgb", "partialface"}
    assert (meta["train_identities"], meta["victim_identities"]) == (4, 2)
    # RGB: one deterministic run; PartialFace: one run per query seed through protect -> recognize
    assert rows["rgb"]["verification"]["seeds"] == []
    assert rows["partialface"]["verification"]["seeds"] == [0, 1, 2]
    assert rows["rgb"]["verification"]["num_pairs"] == rows["partialface"]["verification"]["num_pairs"]
    assert rows["rgb"]["payload_bytes"] == 3 * 112 * 112  # uint8 image
    assert rows["partialface"]["payload_bytes"] >= 27 * 112 * 112 * 4  # 27 float32 channels
    for row in rows.values():
        attack = row["attack"]
        assert {"decoder", "ridge", "no_information"} <= set(attack)
        assert 0.0 <= attack["decoder"]["attack_success"] <= 1.0
    assert rows["rgb"]["attack"]["ridge"]["psnr"] > 60  # the identity payload is inverted exactly

    table = (out / "privacy_table.md").read_text(encoding="utf-8")
    assert "| rgb | 1 |" in table and "| partialface | 1 |" in table and "(baseline)" in table


def _row(leakage: float, success: float) -> dict:
    metrics = {"psnr": 20.0, "ssim": 0.5, "identity_leakage": leakage, "attack_success": success}
    return {
        "stages": 1,
        "payload_bytes": 1,
        "verification": {"accuracy": 0.9, "seed_std": 0.0, "fold_std": 0.01, "seeds": [], "num_pairs": 10},
        "attack": {"decoder": metrics, "ridge": metrics, "no_information": {"psnr": 15.0, "ssim": 0.2}},
    }


@pytest.mark.parametrize(("leakage", "success", "verdict"), [(0.5, 0.1, "yes"), (0.95, 0.1, "**no**")])
def test_a_method_that_leaks_as_much_as_rgb_is_reported_not_hidden(leakage, success, verdict) -> None:
    meta = {
        "data": "orl",
        "backbone": "tiny",
        "steps_per_stage": 1,
        "batch_size": 1,
        "lr": 0.1,
        "decoder_steps": 1,
        "far": 0.01,
        "encoder": "e",
        "wall_seconds": 1.0,
        "verification_pairs": 10,
        "verification_identities": 2,
        "query_seeds": [0, 1, 2],
    }
    table = privacy_table.markdown_table({"rgb": _row(0.9, 0.5), "dctdp": _row(leakage, success)}, meta)
    dctdp_line = next(line for line in table.splitlines() if line.startswith("| dctdp"))
    assert dctdp_line.rstrip(" |").endswith(verdict)
