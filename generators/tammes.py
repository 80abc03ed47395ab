"""Well-separated identity anchors: a batched Tammes solver on the unit hypersphere.

ID3 (Algorithm 3) places the N identity anchors of a synthetic dataset by solving the Tammes
problem: put N points on the unit sphere so that the *minimum* pairwise angle is as large as
possible. In 512-d random points are already nearly orthogonal, so what the solver buys is a better
*worst* pair (ID3, arXiv 2409.17576, Appendix C).

Method (ours; ID3's solver was never released): projected gradient descent on a per-point smooth
maximum of cosines. Each point i moves away from the softmax(sharpness * cos) - weighted mean of its
K nearest neighbours, along the sphere's tangent, then is renormalised. The sharpness rises and the
step falls over the run (annealing from "spread out" to "fix the worst pairs"). Neighbour lists are
rebuilt every ``refresh_every`` steps from an exact blockwise all-pairs pass, which never holds more
than about 2**26 cosines at once, so N = 100,000 x 512 fits on a laptop CPU (slowly) or a GPU. The
exact minimum angle is known at every refresh and the best configuration seen is returned.

Optional region restriction: real face embeddings occupy a small part of the sphere. A
:class:`SphereSubspace` fitted on reference embeddings (their mean m and top-k principal directions
V, with the spread s of the data in those directions) parameterises anchors as
``a = normalize(m + s * V^T z)`` with z on the unit k-sphere: every anchor lies on the "typical
shell" of the reference cloud. The solver then moves z, with the gradient pulled back through this
map, so it maximises the minimum angle between the *final* anchors.

Everything is deterministic from ``seed`` on a given device type (the random start is drawn on the
CPU); CPU and GPU runs may differ in the last bits, so pass precomputed anchors (a ``.npy`` file) to
runs that must agree across machines.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from facesynth.core.errors import FacesynthError

logger = logging.getLogger(__name__)

_MAX_BLOCK_ELEMENTS = 1 << 26  # cosines held at once in the all-pairs pass (256 MiB in float32)
_DENSE_GATHER_LIMIT = 1 << 21  # N*K*D up to which a step gathers neighbours densely (8 MiB)


@dataclass
class SphereSubspace:
    """The region of the sphere that reference embeddings occupy: mean + top-k principal directions."""

    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (k, D), orthonormal rows
    scale: float  # typical distance of reference points from the mean inside the subspace

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def rank(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, embeddings: np.ndarray | torch.Tensor, rank: int) -> SphereSubspace:
        """PCA of L2-normalised reference embeddings (R, D); keeps ``rank`` directions."""
        x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
        if x.ndim != 2:
            raise FacesynthError(f"subspace: reference embeddings must be (rows, dim), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise FacesynthError("subspace: reference embeddings contain NaN or inf")
        rows, dim = x.shape
        if not 2 <= rank <= dim:
            raise FacesynthError(f"subspace: rank must be in [2, {dim}], got {rank}")
        if rows <= rank:
            raise FacesynthError(f"subspace: need more than {rank} reference embeddings, got {rows}")
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / rows
        values, vectors = torch.linalg.eigh(cov)  # ascending
        top = torch.argsort(values, descending=True)[:rank]
        components = vectors[:, top].T.contiguous()
        scale = float(values[top].clamp_min(0).sum().sqrt())
        if scale <= 0:
            raise FacesynthError("subspace: reference embeddings have no spread")
        return cls(mean.float(), components.float(), scale)

    def to(self, device: torch.device | str) -> SphereSubspace:
        return SphereSubspace(self.mean.to(device), self.components.to(device), self.scale)

    def embed(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Subspace points z (N, k) on the unit sphere -> anchors (N, D) and the pre-norm lengths."""
        u = self.mean + self.scale * (z @ self.components)
        norm = u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return u / norm, norm

    def pull_back(self, grad_a: torch.Tensor, a: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """Vector-Jacobian product of :meth:`embed`: a gradient on anchors -> a gradient on z."""
        tangent = grad_a - (grad_a * a).sum(1, keepdim=True) * a
        return self.scale * (tangent / norm) @ self.components.T


@dataclass
class TammesResult:
    """Anchors (N, D) float32 unit rows on the CPU, and how well they are spread."""

    anchors: torch.Tensor
    min_angle_deg: float
    random_min_angle_deg: float  # the seeded random start: the "random placement" baseline
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, min angle) at refreshes


def max_cosine(points: torch.Tensor, block_rows: int | None = None) -> float:
    """Largest cosine between two distinct rows of unit-norm ``points`` (exact, blockwise)."""
    _, cos = nearest_neighbours(points, 1, block_rows)
    return float(cos.max())


def min_angle_degrees(points: torch.Tensor) -> float:
    """Smallest pairwise angle of unit-norm rows, in degrees."""
    return math.degrees(math.acos(min(1.0, max(-1.0, max_cosine(points)))))


def nearest_neighbours(
    points: torch.Tensor, k: int, block_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (N, k) and cosines (N, k) of each row's k most similar other rows; never NxN at once."""
    n = points.shape[0]
    k = min(k, n - 1)
    rows = block_rows or max(1, min(n, _MAX_BLOCK_ELEMENTS // max(n, 1)))
    indices = torch.empty((n, k), dtype=torch.long, device=points.device)
    values = torch.empty((n, k), dtype=points.dtype, device=points.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sims = points[start:stop] @ points.T
        local = torch.arange(stop - start, device=points.device)
        sims[local, local + start] = -float("inf")
        top = sims.topk(k, dim=1)
        values[start:stop], indices[start:stop] = top.values, top.indices
    return indices, values


def _soft_neighbour_mean(
    anchors: torch.Tensor, neighbour_idx: torch.Tensor, beta: float, sparse: bool = False
) -> torch.Tensor:
    """Per point, the softmax(beta * cos)-weighted mean of its listed neighbours, (N, D).

    Large problems (or ``sparse=True``) use sparse CSR kernels (sampled dense-dense product for the
    N*K cosines, sparse-dense product for the means), which never materialise the (N, K, D) gathered
    neighbours; small ones gather directly.
    """
    n, k = neighbour_idx.shape
    if not sparse and n * k * anchors.shape[1] <= _DENSE_GATHER_LIMIT:
        near = anchors[neighbour_idx]  # small problems: one gather is cheaper than sparse set-up
        weights = torch.softmax(beta * torch.einsum("nd,nkd->nk", anchors, near), dim=1)
        return torch.einsum("nk,nkd->nd", weights, near)
    crow = torch.arange(0, n * k + 1, k, device=anchors.device)
    col = neighbour_idx.reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(
            crow, col, torch.ones(n * k, dtype=anchors.dtype, device=anchors.device), size=(n, n)
        )
        cos = torch.sparse.sampled_addmm(pattern, anchors, anchors.T, beta=0.0).values().view(n, k)
        weights = torch.softmax(beta * cos, dim=1).reshape(-1)
        matrix = torch.sparse_csr_tensor(crow, col, weights, size=(n, n))
        return matrix @ anchors


def random_sphere_points(
    num_points: int, dim: int, seed: int, subspace: SphereSubspace | None = None
) -> torch.Tensor:
    """Seeded uniformly random unit points (on the subspace's shell when given), float32 on the CPU."""
    generator = torch.Generator().manual_seed(int(seed))
    width = subspace.rank if subspace is not None else dim
    z = torch.randn(num_points, width, generator=generator)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if subspace is None:
        return z
    return subspace.to("cpu").embed(z)[0]


def solve_tammes(
    num_points: int,
    dim: int = 512,
    *,
    seed: int = 0,
    steps: int = 300,
    neighbours: int = 16,
    refresh_every: int = 10,
    step_size: float = 0.2,
    final_step_size: float = 0.005,
    sharpness: float = 20.0,
    final_sharpness: float = 400.0,
    subspace: SphereSubspace | None = None,
    device: torch.device | str = "cpu",
    block_rows: int | None = None,
    progress: bool = True,
) -> TammesResult:
    """Spread ``num_points`` unit vectors in ``dim`` dimensions to maximise their minimum angle.

    Defaults are ours (the paper gives none). ``steps`` and ``refresh_every`` trade time for quality;
    each refresh is one all-pairs pass (N^2 D multiply-adds), each step costs N K D.
    """
    from tqdm.auto import tqdm

    if num_points < 2:
        raise FacesynthError(f"tammes: need at least 2 points, got {num_points}")
    if subspace is not None and subspace.dim != dim:
        raise FacesynthError(f"tammes: subspace is {subspace.dim}-d but dim={dim}")
    if dim < 2 or steps < 0 or neighbours < 1 or refresh_every < 1:
        raise FacesynthError(
            f"tammes: bad settings dim={dim} steps={steps} neighbours={neighbours} refresh_every={refresh_every}"
        )
    started = time.perf_counter()
    device = torch.device(device)
    space = subspace.to(device) if subspace is not None else None
    generator = torch.Generator().manual_seed(int(seed))
    z = torch.randn(num_points, space.rank if space else dim, generator=generator).to(device)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def embed(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return space.embed(z) if space is not None else (z, None)

    anchors, norm = embed(z)
    k = min(neighbours, num_points - 1)
    rows = block_rows or max(1, min(num_points, _MAX_BLOCK_ELEMENTS // num_points))
    history: list[tuple[int, float]] = []
    best, best_cos, random_cos = anchors.clone(), float("inf"), float("nan")
    bar = tqdm(total=steps, desc=f"tammes N={num_points} D={dim}", unit="step", disable=not progress)
    neighbour_idx = None
    for step in range(steps + 1):
        if step % refresh_every == 0 or step == steps:
            neighbour_idx, cos = nearest_neighbours(anchors, k, rows)
            worst = float(cos[:, 0].max())
            if step == 0:
                random_cos = worst
            history.append((step, math.degrees(math.acos(min(1.0, worst)))))
            if worst < best_cos:
                best_cos, best = worst, anchors.clone()
            bar.set_postfix(min_angle=f"{history[-1][1]:.3f}")
        if step == steps:
            break
        frac = step / max(1, steps - 1)
        lr = step_size * (final_step_size / step_size) ** frac
        beta = sharpness * (final_sharpness / sharpness) ** frac
        grad = _soft_neighbour_mean(anchors, neighbour_idx, beta)
        if space is not None:
            grad_z = space.pull_back(grad, anchors, norm)
        else:
            grad_z = grad
        grad_z = grad_z - (grad_z * z).sum(1, keepdim=True) * z
        z = z - lr * grad_z
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        anchors, norm = embed(z)
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - started
    result = TammesResult(
        anchors=best.float().cpu(),
        min_angle_deg=math.degrees(math.acos(min(1.0, best_cos))),
        random_min_angle_deg=math.degrees(math.acos(min(1.0, random_cos))),
        seconds=seconds,
        history=history,
    )
    logger.info(
        "tammes N=%d D=%d: min angle %.3f deg (random start %.3f deg) in %.1f s",
        num_points,
        dim,
        result.min_angle_deg,
        result.random_min_angle_deg,
        seconds,
    )
    return result
