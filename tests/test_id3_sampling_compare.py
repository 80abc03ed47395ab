"""bench_id3_sampling's sampler comparison: DDIM-50 is its own reference, other seeds and options differ."""

from __future__ import annotations

import math

from facesynth.benchmarks.bench_id3_sampling import compare_samplers
from facesynth.tests.id3_tiny import one_thread, tiny_encoder, tiny_pipeline


def test_compare_samplers_measures_options_against_ddim_50_on_the_same_seeds():
    pipe = tiny_pipeline(condition_dropout=0.0)
    pipe.set_progress_bar_config(disable=True)
    with one_thread():
        table = compare_samplers(
            pipe, tiny_encoder(0, 8), tiny_encoder(1, 8), batch=6, kappa=10.0, fast_steps=5
        )
    assert set(table) == {
        "ddim_50",
        "dpmsolver++_5",
        "unipc_5",
        "ddim_50_guidance_every_2",
        "ddim_50_guidance_first_half",
        "ddim_50_other_seeds",
    }
    reference = table["ddim_50"]
    assert reference["time_ratio_to_ddim_50"] == 1.0 and reference["cpu_time_ratio_to_ddim_50"] == 1.0
    assert math.isclose(reference["paired_cos_B"], 1.0, abs_tol=1e-5) and abs(reference["frechet_B"]) < 1e-4
    # other seeds give other images; so does taking the identity gradient on half the steps
    assert table["ddim_50_other_seeds"]["paired_cos_B"] < 0.9999
    assert table["ddim_50_guidance_every_2"]["paired_cos_B"] < 0.9999
    for name, row in table.items():
        assert row["cpu_seconds"] > 0 and row["seconds"] > 0, name
        assert math.isfinite(row["frechet_B"]), name
