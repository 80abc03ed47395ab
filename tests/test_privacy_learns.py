"""Each privacy method learns: a short training on parametric faces verifies *unseen* identities
through protect -> recognize clearly above chance and above the raw-pixel verifier (issue 15.4).

Recipes and data in :mod:`facesynth.tests.privacy_learning` (32 x 32 faces, tiny IResNet, 160 steps
per row, 320 for MinusFace; two-stage methods split them). Measured on the shared 2-core box with
``python -m facesynth.tests.privacy_learning`` (one thread; 160 pairs over 40 unseen identities): raw
pixels 0.706; DCTDP 0.775, DuetFace 0.794, PartialFace 0.813, MinusFace 0.769. Each row takes one to
five minutes of wall time, depending on the load.

MinusFace is tested with our ``generator_residual`` option (x' = x + g(x), so the generator starts as a
copy of its input), half the steps per stage, 320 in all: 0.769 / 0.800 / 0.825 on data seeds 0 / 1 / 2
against raw pixels 0.706 / 0.694 / 0.725 (``--seed N minusface``), a margin of 0.06-0.11 over raw
pixels. The paper's generator (x' = g(x)) does not learn in the other methods' budget (measured by the
script, ``minusface_paper``; not run here, to keep CI short): in 40 stage-1 steps its generator
regenerates nothing (its L1 term stays at its starting value, about 0.43; the residue keeps the DC
channels, |r|/|x| about 1), and a shuffle that sends the DC channels, i.e. the face itself, to a random
frequency slot leaves stage 2 at 0.600. Stage 2 itself can learn: with the DC channels removed from
the residue by hand it reaches 0.78 after 120 steps. At 320 steps (160 + 160) the paper's form reaches
0.725, not clearly above raw pixels.
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
@pytest.mark.parametrize("name", list(privacy_learning.RECIPES))
def test_privacy_method_learns_above_raw_pixels_on_unseen_identities(name, data, tmp_path):
    result = privacy_learning.train_and_score(name, data, tmp_path)
    assert result["accuracy"] > CHANCE + 0.15, result
    assert result["accuracy"] > data["raw"] + MARGIN_OVER_RAW, (result, data["raw"])
