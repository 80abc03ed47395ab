"""The ID3 ablation testbed's smoke recipe runs every stage and fills every row and column."""

from __future__ import annotations

import math

import pytest

from facesynth.benchmarks.ablation_id3_parametric import ROWS, main


@pytest.mark.slow
def test_ablation_smoke_fills_the_table(tmp_path, capsys):
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    import json

    results = json.loads((tmp_path / "ablation.json").read_text())
    assert set(results["table"]) == set(ROWS)
    for row in ROWS:
        cells = results["table"][row]
        assert -1.0 <= cells["genuine"][0] <= 1.0 and -1.0 <= cells["impostor"][0] <= 1.0
        assert 0.0 <= cells["accuracy"][0] <= 1.0 and 0.0 <= cells["tar@far=1e-3"][0] <= 1.0
    # the renderer's requested yaw varies within an identity; the no-attribute row requests none
    assert results["table"]["renderer"]["attr_spread"][0] > 1.0
    assert math.isnan(results["table"]["no_attributes"]["attr_spread"][0]) or (
        results["table"]["no_attributes"]["attr_spread"][0] == 0.0
    )
    assert results["expected_full_hours"] > 0
    assert "| band_0.5_0.7 |" in (tmp_path / "ablation.md").read_text()
    assert "expected wall time" in capsys.readouterr().out
