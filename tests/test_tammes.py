"""Tammes anchors: better minimum angle than random placement, known optima, blockwise = exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.generators.tammes import (
    SphereSubspace,
    min_angle_degrees,
    nearest_neighbours,
    random_sphere_points,
    solve_tammes,
)


def _brute_min_angle(points: torch.Tensor) -> float:
    sims = points.double() @ points.double().T
    sims.fill_diagonal_(-2.0)
    return math.degrees(math.acos(float(sims.max())))


def test_icosahedron_is_found():
    # 12 points on the 2-sphere: the optimum is the icosahedron, min angle arctan(2) = 63.435 deg.
    result = solve_tammes(12, 3, seed=0, steps=300, progress=False)
    assert result.min_angle_deg == pytest.approx(math.degrees(math.atan(2.0)), abs=0.1)
    assert result.random_min_angle_deg < 40


def test_cross_polytope_reaches_right_angles():
    # 2D points in D dims can be mutually orthogonal or antipodal: the optimum min angle is 90 deg.
    result = solve_tammes(8, 4, seed=1, steps=300, progress=False)
    assert result.min_angle_deg == pytest.approx(90.0, abs=0.2)


def test_beats_random_placement_in_high_dimension():
    n, dim, seed = 600, 64, 3
    result = solve_tammes(n, dim, seed=seed, steps=120, progress=False)
    anchors = result.anchors
    assert anchors.shape == (n, dim) and anchors.dtype == torch.float32
    assert torch.allclose(anchors.norm(dim=1), torch.ones(n), atol=1e-5)
    # the reported angle is the true one, and the random start is the same seeded random placement
    assert result.min_angle_deg == pytest.approx(_brute_min_angle(anchors), abs=1e-3)
    random = random_sphere_points(n, dim, seed)
    assert result.random_min_angle_deg == pytest.approx(_brute_min_angle(random), abs=1e-3)
    assert result.min_angle_deg > result.random_min_angle_deg + 10
    # and it beats other random placements too, not just its own start
    assert result.min_angle_deg > max(_brute_min_angle(random_sphere_points(n, dim, s)) for s in range(5))


def test_deterministic_and_seed_dependent():
    a = solve_tammes(50, 16, seed=7, steps=30, progress=False).anchors
    b = solve_tammes(50, 16, seed=7, steps=30, progress=False).anchors
    c = solve_tammes(50, 16, seed=8, steps=30, progress=False).anchors
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_blockwise_neighbours_match_dense():
    points = random_sphere_points(97, 12, seed=0)
    idx_small, cos_small = nearest_neighbours(points, 5, block_rows=7)
    dense = points @ points.T
    dense.fill_diagonal_(-float("inf"))
    top = dense.topk(5, dim=1)
    assert torch.allclose(cos_small, top.values, atol=1e-6)
    assert torch.equal(idx_small[:, 0], top.indices[:, 0])
    assert min_angle_degrees(points) == pytest.approx(_brute_min_angle(points), abs=1e-3)
    # tiny blocks inside the solver give the same result as the default block size
    r1 = solve_tammes(40, 6, seed=2, steps=20, progress=False)
    r2 = solve_tammes(40, 6, seed=2, steps=20, progress=False, block_rows=3)
    assert torch.allclose(r1.anchors, r2.anchors, atol=1e-6)


def test_subspace_restriction_keeps_anchors_in_the_reference_region():
    rng = np.random.default_rng(0)
    dim, rank = 32, 4
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # (rank, dim)
    centre = np.zeros(dim)
    centre[0] = 1.0
    basis = basis - np.outer(basis @ centre, centre)  # keep the directions orthogonal to the mean
    reference = centre + 0.3 * rng.standard_normal((400, rank)) @ basis
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    space = SphereSubspace.fit(reference, rank)
    assert space.rank == rank and space.dim == dim
    result = solve_tammes(60, dim, seed=0, steps=150, subspace=space, progress=False)
    anchors = result.anchors.double().numpy()
    assert np.allclose(np.linalg.norm(anchors, axis=1), 1.0, atol=1e-5)
    # every anchor lies in span(mean, components): nothing outside the reference subspace
    span = np.linalg.qr(np.vstack([space.mean.double().numpy(), space.components.double().numpy()]).T)[0]
    residual = anchors - (anchors @ span) @ span.T
    assert np.abs(residual).max() < 1e-4
    # anchors stay on the reference side of the sphere, like the reference embeddings
    assert (anchors @ centre).min() > 0.5
    start = random_sphere_points(60, dim, 0, space)
    assert result.min_angle_deg > _brute_min_angle(start) + 5


def test_bad_settings_are_explained():
    with pytest.raises(FacesynthError, match="at least 2 points"):
        solve_tammes(1, 8, progress=False)
    with pytest.raises(FacesynthError, match="rank"):
        SphereSubspace.fit(np.eye(8), 9)
    with pytest.raises(FacesynthError, match="NaN"):
        SphereSubspace.fit(np.full((10, 4), np.nan), 2)


def test_sparse_and_dense_steps_agree():
    from facesynth.generators.tammes import _soft_neighbour_mean

    points = random_sphere_points(300, 24, seed=4)
    idx, _ = nearest_neighbours(points, 8)
    dense = _soft_neighbour_mean(points, idx, 30.0)
    sparse = _soft_neighbour_mean(points, idx, 30.0, sparse=True)
    assert torch.allclose(dense, sparse, atol=1e-5)
