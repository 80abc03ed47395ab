"""Each privacy method learns: a short training on parametric faces verifies *unseen* identities
through protect -> recognize clearly above chance and above the raw-pixel verifier (issue 15.4).

Recipe and data in :mod:`facesynth.tests.privacy_learning` (32 x 32 faces, tiny IResNet, 160 steps
per row, two-stage methods split them: a quarter for the first stage). Measured on the shared 2-core
box with ``python -m facesynth.tests.privacy_learning`` (one thread; 160 pairs over 40 unseen
identities): raw pixels 0.706; DCTDP 0.775, DuetFace 0.794, PartialFace 0.813, MinusFace 0.600. Each
row took 4-11 min of wall time on the loaded box (about a minute of CPU each).

MinusFace does not learn in this budget (below the raw-pixel verifier, as in the README's parametric
table at 250 steps): its case is an expected failure, strict, so that a fix shows up here. Why (measured,
one thread, same data and seed): stage 1's generator does not regenerate anything in 40 steps (its L1 term
stays at its starting value, about 0.43; the residue keeps the DC channels, |r|/|x| about 1), and a shuffle
that sends the DC channels, i.e. the face itself, to a random frequency slot leaves stage 2 at 0.60. Stage 2
itself can learn: with the DC channels removed from the residue by hand it reaches 0.78 after 120 steps
(0.62 after 80), and without the shuffle 0.86. Making the generator learn faster (per-image channel
normalisation of its input and output, Adam at 1e-3 to 3e-2, wider or deeper U-Nets, half the budget for
stage 1) lowers its L1 to about 0.28 but not the DC enough, and stage 2 then scores 0.53-0.63; at 320
steps (160 + 160) the paper's recipe reaches 0.725, the normalised generator 0.556.

What does learn: our ``generator_residual`` option (x' = x + g(x), so g starts from a copy of its input)
with half the steps for each stage, 0.750 (seed 0) and 0.762 (seed 1) against the paper form's 0.700
with the same split (seed 1); ``python -m facesynth.tests.privacy_learning minusface_residual``. Its margin
over raw pixels (7-9 of 160 pairs) is too thin for a test that must pass on any CPU's numerics, so it is
measured there and its mechanism is tested in ``tests/test_minusface.py``.
"""

from __future__ import annotations

import pytest

from facesynth.tests import privacy_learning

CHANCE = 0.5
MARGIN_OVER_RAW = 0.03  # about one standard error of a 160-pair accuracy


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import facesynth.privacy  # noqa: F401  (registers the privacy methods)

    folder = tmp_path_factory.mktemp("privacy-learns")
    made = privacy_learning.make_data(folder / "train")
    made["raw"] = privacy_learning.raw_pixel_accuracy(made)
    return made


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            name,
            marks=pytest.mark.xfail(
                strict=True,
                reason="MinusFace stays below raw pixels after 160 steps (0.600 vs 0.706): its stage-1 "
                "generator does not learn in 40 steps (module docstring)",
            ),
        )
        if name == "minusface"
        else name
        for name in privacy_learning.RECIPES
    ],
)
def test_privacy_method_learns_above_raw_pixels_on_unseen_identities(name, data, tmp_path):
    result = privacy_learning.train_and_score(name, data, tmp_path)
    assert result["accuracy"] > CHANCE + 0.15, result
    assert result["accuracy"] > data["raw"] + MARGIN_OVER_RAW, (result, data["raw"])
