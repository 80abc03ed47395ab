"""The one verification-metrics module: thresholds, rates and pairs on score sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.core.errors import FacesynthError
from facesynth.core.verification_metrics import (
    balanced_pairs,
    best_threshold_accuracy,
    error_rates,
    threshold_at_far,
)


def test_eer_and_fnmr_at_fmr_on_known_score_sets():
    rng = np.random.default_rng(12)
    impostor = rng.uniform(0.0, 1.0, size=100_000)
    genuine = rng.uniform(0.9, 1.9, size=10_000)  # 10% of genuine scores overlap the top 10% of impostors
    rates = error_rates(genuine, impostor)
    # EER where P(imp > t) = P(gen < t): (1 - t) = (t - 0.9) -> t = 0.95, EER = 0.05
    assert rates["eer"] == pytest.approx(0.05, abs=0.005)
    assert rates["eer_threshold"] == pytest.approx(0.95, abs=0.005)
    # FMR 1e-2 -> threshold 0.99 -> FNMR = P(gen < 0.99) = 0.09; FMR 1e-3 -> 0.999 -> 0.099
    assert rates["fnmr_at_fmr"]["0.01"]["fnmr"] == pytest.approx(0.09, abs=0.005)
    assert rates["fnmr_at_fmr"]["0.001"]["fnmr"] == pytest.approx(0.099, abs=0.005)
    assert rates["fnmr_at_fmr"]["0.001"]["achieved_fmr"] <= 1e-3
    same = error_rates(rng.normal(size=20_000), rng.normal(size=20_000))
    assert same["eer"] == pytest.approx(0.5, abs=0.02)
    assert error_rates(np.array([]), impostor) == {"eer": None, "fnmr_at_fmr": {}}


def test_threshold_at_far_lets_at_most_that_share_of_impostors_through():
    scores = np.linspace(0, 1, 1001)
    for far in (0.0, 0.01, 0.1):
        t = threshold_at_far(scores, far)
        accepted = float(np.mean(scores >= t))
        assert accepted <= far and accepted > far - 0.002  # the loosest threshold that meets the FAR
    assert threshold_at_far(scores, 1.0) == 0.0
    with pytest.raises(FacesynthError, match="impostor scores"):
        threshold_at_far(np.array([]), 0.01)


def test_best_threshold_accuracy():
    assert best_threshold_accuracy(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0])) == 1.0
    assert best_threshold_accuracy(np.array([0.9, 0.8, 0.3, 0.1]), np.array([0, 0, 1, 1])) == 0.5
    assert best_threshold_accuracy(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0])) == 0.5
    assert best_threshold_accuracy(np.array([0.9, 0.7, 0.8, 0.1]), np.array([1, 1, 0, 0])) == 0.75


def test_balanced_pairs_are_balanced_and_impostors_cross_identities():
    pairs = balanced_pairs(5, 4, seed=3)
    genuine = pairs[pairs[:, 4] == 1]
    impostor = pairs[pairs[:, 4] == 0]
    assert len(genuine) == len(impostor) == 10
    assert np.all(genuine[:, 0] == genuine[:, 2]) and np.all(impostor[:, 0] != impostor[:, 2])
    assert np.array_equal(pairs, balanced_pairs(5, 4, seed=3))
    with pytest.raises(FacesynthError, match="at least 2 identities"):
        balanced_pairs(1, 4)
