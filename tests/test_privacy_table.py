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
    args = ["--data", "parametric", "--identities", "8", "--per-identity", "4", "--steps", "4"]
    args += ["--decoder-steps", "2", "--decoder-widths", "8", "16", "--batch-size", "8"]
    args += ["--rows", "rgb", "minusface", "--multi-query-ks", "1", "2"]
    args += ["--max-pairs", "20", "--threads", "1", "--out", str(out)]
    assert privacy_table.main(args) == 0

    report = json.loads((out / "privacy_table.json").read_text(encoding="utf-8"))
    meta, rows = report["meta"], report["rows"]
    assert set(rows) == {"rgb", "minusface"}
    # the same total training steps for every row; two-stage rows split them
    assert rows["rgb"]["stage_steps"] == [4]
    assert rows["minusface"]["stage_steps"] == [2, 2]
    assert (meta["train_identities"], meta["victim_identities"]) == (4, 2)
    # RGB: one deterministic run; MinusFace: one run per query seed through protect -> recognize
    assert rows["rgb"]["verification"]["seeds"] == []
    assert rows["minusface"]["verification"]["seeds"] == [0, 1, 2]
    assert rows["rgb"]["verification"]["num_pairs"] == rows["minusface"]["verification"]["num_pairs"]
    assert rows["rgb"]["payload_bytes"] == 3 * 112 * 112  # uint8 image
    assert rows["minusface"]["payload_bytes"] == 3 * 112 * 112 * 4  # one float32 image
    # sizes in one dtype: RGB and MinusFace send the same number of values (one image)
    assert rows["rgb"]["payload"]["values"] == rows["minusface"]["payload"]["values"] == 3 * 112 * 112
    assert rows["rgb"]["payload"]["float32_bytes"] == rows["minusface"]["payload"]["float32_bytes"]
    # multi-query attacks for the randomised rows, one entry per k
    assert "multi_query" not in rows["rgb"]
    assert set(rows["minusface"]["multi_query"]) == {"1", "2"}
    for row in rows.values():
        attack = row["attack"]
        assert {"decoder", "ridge", "no_information"} <= set(attack)
        assert 0.0 <= attack["decoder"]["attack_success"] <= 1.0
    assert rows["rgb"]["attack"]["ridge"]["psnr"] > 60  # the identity payload is inverted exactly
    assert rows["minusface"]["payload"]["sent_bytes"] == rows["minusface"]["payload_bytes"]

    table = (out / "privacy_table.md").read_text(encoding="utf-8")
    assert "| rgb | 1 (4) |" in table and "| minusface | 2 (2+2) |" in table and "(baseline)" in table
    assert "| no-information floor |" in table and "| k = 1 | k = 2 |" in table


def test_attack_faces_are_resized_as_a_client_at_the_input_size_sends_them() -> None:
    import numpy as np

    image = np.zeros((112, 112, 3), np.uint8)
    image[:, 56:] = 255  # right half white
    points = np.array([[38.0, 52.0], [74.0, 52.0], [56.0, 72.0], [42.0, 92.0], [70.0, 92.0]], np.float32)
    (name, small, moved), (_, same, none) = privacy_table.resize_face_set(
        [("a", image, points), ("b", image, None)], 32
    )
    assert name == "a" and small.shape == (32, 32, 3) and small.dtype == np.uint8
    assert small[:, :15].max() == 0 and small[:, 17:].min() == 255  # the edge stays where it was
    np.testing.assert_allclose(moved, (points + 0.5) * 32 / 112 - 0.5, rtol=1e-6)
    assert none is None and same.shape == (32, 32, 3)
    assert privacy_table.resize_face_set([("a", image, points)], 112)[0][1] is image  # 112: untouched


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
        "steps_per_row": 1,
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
