"""The ID3 condition probe: every variant gets seen and unseen rows next to the real-render ceiling."""

import json

import pytest

from facesynth.benchmarks.probe_id3_condition import SMOKE_SETS, format_results, main


@pytest.mark.slow
def test_probe_smoke_fills_the_table(tmp_path, capsys):
    assert main(["--smoke", "--variants", "base", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "probe.json").read_text())
    rows = results["variants"]["base"]
    identities = SMOKE_SETS["test"][0]
    assert rows["unseen"]["kappa=0"]["images"] == 2 * identities  # two faces per identity
    assert set(rows["unseen"]) == {"kappa=0", "kappa=30"} and set(rows["seen"]) == {"kappa=0"}
    # guidance pulls the faces towards their condition under the guiding encoder A
    guided, plain = rows["unseen"]["kappa=30"], rows["unseen"]["kappa=0"]
    assert guided["guidance_cos_A"] > plain["guidance_cos_A"] + 0.2
    # encoder B tells two real renders of one identity from two identities
    real = results["real"]["unseen"]
    assert real["id_cos_B"] > real["impostor_cos_B"]
    assert "| base |" in capsys.readouterr().out
    assert format_results(results) == (tmp_path / "probe.md").read_text()
