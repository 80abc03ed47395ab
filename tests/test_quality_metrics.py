"""Quality metrics on constructed embeddings whose answers are known in advance."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.data_cards.quality_metrics import (
    QualitySettings,
    attribute_spread,
    compute_quality,
    fisher_discriminant_ratio,
    genuine_scores,
    greedy_uniqueness,
    impostor_scores,
    pairwise_stats,
)

DIM = 512


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clusters(num_classes: int, per_class: int, noise: float, seed: int = 0, dim: int = DIM):
    """Random (near-orthogonal in 512-d) class directions plus isotropic noise per image."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(num_classes, dim)))
    labels = np.repeat(np.arange(num_classes), per_class)
    emb = centres[labels] + noise * rng.normal(size=(labels.size, dim)) / np.sqrt(dim)
    return unit(emb), labels, centres


SMALL = QualitySettings(impostor_pairs=20_000, block_size=64)


def test_identical_clusters_are_perfectly_consistent():
    emb, labels, centres = clusters(30, 6, noise=0.0)
    report = compute_quality(emb, labels, anchors=centres, conditions=centres[labels], settings=SMALL)
    intra = report["intra_class"]
    assert intra["cos_to_centre"]["min"] == pytest.approx(1.0, abs=1e-5)
    assert intra["c_intra"] == 1.0
    assert intra["cos_to_anchor"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert intra["identity_flips"]["count"] == 0
    assert intra["genuine"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert report["diversity"]["embedding_spread"]["max"] == pytest.approx(0.0, abs=1e-5)
    assert report["inter_class"]["eer"] == 0.0
    assert report["inter_class"]["fnmr_at_fmr"]["0.001"]["fnmr"] == 0.0
    assert report["inter_class"]["uniqueness"]["share"] == 1.0
    # anchors drawn at random in 512-d are nearly orthogonal
    assert 75 < report["inter_class"]["anchor_packing"]["min_angle_deg"] < 105
    assert report["counts"] == {
        "images": 180,
        "identities": 30,
        "embedding_dim": DIM,
        "images_per_identity": {"min": 6, "mean": 6.0, "max": 6},
    }


def test_planted_duplicate_identities_lower_uniqueness_by_the_planted_amount():
    base, planted = 40, 7
    emb, labels, centres = clusters(base, 5, noise=0.3, seed=1)
    rng = np.random.default_rng(2)
    # 7 extra identities that re-render identities 3, 8, 13, ... (same direction, fresh noise)
    copies = np.arange(planted) * 5 + 3
    dup_labels = np.repeat(np.arange(base, base + planted), 5)
    dup = unit(centres[np.repeat(copies, 5)] + 0.3 * rng.normal(size=(planted * 5, DIM)) / np.sqrt(DIM))
    clean = compute_quality(emb, labels, settings=SMALL)["inter_class"]["uniqueness"]
    mixed = compute_quality(np.vstack([emb, dup]), np.r_[labels, dup_labels], settings=SMALL)["inter_class"]
    assert clean["unique"] == base
    assert mixed["uniqueness"]["unique"] == base  # the planted copies are all rejected
    assert mixed["uniqueness"]["share"] == pytest.approx(base / (base + planted))
    assert mixed["centre_impostor"]["above_threshold"] == planted  # exactly the planted pairs are too close


def test_planted_real_identity_is_flagged_as_leaked():
    emb, labels, centres = clusters(25, 4, noise=0.4, seed=3)
    rng = np.random.default_rng(4)
    real = unit(rng.normal(size=(60, DIM)))
    real[17] = centres[9]  # synthetic identity 9 is a real person
    names = [f"syn{i}" for i in range(25)]
    real_names = [f"real{i}" for i in range(60)]
    leak = compute_quality(
        emb, labels, reference_centres=real, class_names=names, reference_names=real_names, settings=SMALL
    )["leakage"]
    assert leak["flagged_identities"] == 1
    assert leak["flagged_identity_names"] == ["syn9"]
    assert leak["flagged_images"] == 4
    top = leak["top_matches"][0]
    assert (top["identity"], top["centre_match"], top["image_match"], top["flagged"]) == (
        "syn9",
        "real17",
        "real17",
        True,
    )
    assert top["centre_cos"] > 0.9
    assert not leak["top_matches"][1]["flagged"]


def test_image_level_leak_missed_by_the_centre_is_still_flagged():
    emb, labels, centres = clusters(10, 8, noise=0.2, seed=5)
    rng = np.random.default_rng(6)
    real = unit(rng.normal(size=(20, DIM)))
    emb = emb.copy()
    first_of_4 = int(np.nonzero(labels == 4)[0][0])
    emb[first_of_4] = real[5]  # one image of identity 4 is a real face; its centre moves little
    leak = compute_quality(emb, labels, reference_centres=real, settings=SMALL)["leakage"]
    assert leak["flagged_identities_by_centre"] == 0
    assert leak["flagged_identities_by_image"] == 1
    assert leak["flagged_images"] == 1
    assert leak["flagged_identity_names"] == ["4"]


def test_identity_flips_count_images_far_from_their_anchor():
    emb, labels, centres = clusters(12, 5, noise=0.2, seed=7)
    rng = np.random.default_rng(8)
    flipped = [3, 17, 40]
    emb = emb.copy()
    emb[flipped] = unit(rng.normal(size=(3, DIM)))  # these images no longer show their identity
    flips = compute_quality(emb, labels, anchors=centres, settings=SMALL)["intra_class"]["identity_flips"]
    assert (flips["measured_against"], flips["count"], flips["identities_with_flips"]) == ("anchor", 3, 3)
    assert flips["share"] == pytest.approx(3 / 60)


def test_blockwise_statistics_match_dense_computation():
    rng = np.random.default_rng(9)
    a = unit(rng.normal(size=(70, 16)))
    b = unit(rng.normal(size=(23, 16)))
    stats, row_max, row_arg = pairwise_stats(a, b, 0.2, block_size=16)
    dense = a @ b.T
    assert stats["count"] == dense.size
    assert stats["mean"] == pytest.approx(dense.mean(), abs=1e-6)
    assert stats["std"] == pytest.approx(dense.std(), abs=1e-5)
    assert stats["above_threshold"] == int((dense > 0.2).sum())
    np.testing.assert_allclose(row_max, dense.max(1), atol=1e-6)
    np.testing.assert_array_equal(row_arg, dense.argmax(1))
    # within one set: each unordered pair once, never a row with itself
    stats, row_max, _ = pairwise_stats(a, None, 0.2, block_size=16)
    gram = a @ a.T
    upper = gram[np.triu_indices(70, 1)]
    assert stats["count"] == upper.size
    assert stats["max"] == pytest.approx(upper.max(), abs=1e-6)
    np.fill_diagonal(gram, -np.inf)
    np.testing.assert_allclose(row_max, gram.max(1), atol=1e-6)


def test_genuine_and_impostor_scores_cover_exactly_the_right_pairs():
    rng = np.random.default_rng(10)
    labels = np.array([0] * 5 + [1] * 1 + [2] * 9 + [3] * 2 + [4] * 5)  # unequal classes, one singleton
    emb = unit(rng.normal(size=(labels.size, 8)))
    gram = emb @ emb.T
    i, j = np.triu_indices(labels.size, 1)
    same = labels[i] == labels[j]
    np.testing.assert_allclose(
        np.sort(genuine_scores(emb, labels, max_entries=64)), np.sort(gram[i, j][same]), atol=1e-6
    )
    every, sampled = impostor_scores(emb, labels, 10_000, seed=0, block_size=7)
    assert not sampled
    np.testing.assert_allclose(np.sort(every), np.sort(gram[i, j][~same]), atol=1e-6)
    drawn, sampled = impostor_scores(emb, labels, 50, seed=0, block_size=7)
    assert sampled and drawn.size == 50
    assert np.isin(np.round(drawn, 5), np.round(gram[i, j][~same], 5)).all()


def test_greedy_uniqueness_matches_a_plain_loop_across_blocks():
    rng = np.random.default_rng(11)
    base = unit(rng.normal(size=(20, 6)))
    centres = unit(base[rng.integers(0, 20, size=90)] + 0.4 * rng.normal(size=(90, 6)))
    kept: list[int] = []
    for i in range(90):
        if all(centres[i] @ centres[k] <= 0.8 for k in kept):
            kept.append(i)
    accepted = greedy_uniqueness(centres, 0.8, block_size=16)
    assert np.nonzero(accepted)[0].tolist() == kept
    assert 0 < len(kept) < 90


def test_fisher_discriminant_ratio_formula():
    genuine = np.array([0.8, 0.9, 1.0])
    impostor = np.array([0.0, 0.1, 0.2, 0.3])
    expected = (0.9 - 0.15) ** 2 / (genuine.var() + impostor.var())
    assert fisher_discriminant_ratio(genuine, impostor) == pytest.approx(expected)
    assert fisher_discriminant_ratio(genuine, np.array([])) is None


def test_attribute_spread_separates_within_and_between_identity_variation():
    codes = np.repeat(np.arange(4), 3)
    attrs = np.full((12, 4), np.nan)
    attrs[:, 0] = np.repeat([-30.0, -10.0, 10.0, 30.0], 3)  # yaw constant within identity
    attrs[:, 3] = np.tile([20.0, 40.0, 60.0], 4)  # age varies within identity only
    spread = attribute_spread(attrs, codes, 4)
    assert set(spread) == {"yaw", "age"}  # all-NaN pitch and roll are left out
    assert spread["yaw"]["mean_within_class_std"] == 0.0
    assert spread["yaw"]["std"] == pytest.approx(np.std([-30, -10, 10, 30]))
    assert spread["age"]["mean_within_class_std"] == pytest.approx(np.std([20, 40, 60]))
    assert spread["yaw"]["entropy_bits"] == pytest.approx(2.0)  # 4 equally filled 10-degree bins


def test_unnormalised_inputs_and_arbitrary_labels_give_the_same_report():
    emb, labels, _ = clusters(15, 4, noise=0.5, seed=13)
    ref = compute_quality(emb, labels, settings=SMALL)
    scaled = compute_quality(emb.astype(np.float64) * 7.0, labels * 10 + 3, settings=SMALL)
    assert scaled["intra_class"]["cos_to_centre"]["mean"] == pytest.approx(
        ref["intra_class"]["cos_to_centre"]["mean"], abs=1e-6
    )
    assert scaled["inter_class"]["eer"] == pytest.approx(ref["inter_class"]["eer"])
    with pytest.raises(ValueError, match="labels"):
        compute_quality(emb, labels[:-1], settings=SMALL)
