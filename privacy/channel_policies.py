"""Which of the 192 DCT channels each privacy method keeps, and in which order (TFace
``dctdp/utils.py``, ``duetface/train.py``, ``partialface/utils.py``).

Frequencies are named per colour component by ``k = 8 v + u`` (v vertical, u horizontal); a channel of
the frontend's output is ``64 c + k`` (c = 0 Y, 1 Cb, 2 Cr). Every policy here keeps the same set of
frequencies in each colour component and lays its output out colour-major (all Y first), with the
kept frequencies in ascending k (TFace builds them with a Python set difference, which happens to
iterate in ascending order; we sort explicitly).

Policies:

- :class:`IdentityPolicy`: all 192 (MinusFace).
- :class:`DropDCPolicy`: drop k = 0 -> 189 (DCTDP).
- :class:`SplitPolicy`: client frequencies (30 channels) stay on the client, the other 162 go to the
  server (DuetFace).
- :class:`PartialFacePolicy`: prune the triangle v + u <= 3 (30 channels), keep 54 high-frequency
  channels, and send one subset of 9 of them per colour component (27 channels), permuted, per query.
  The subset and permutation tables are TFace's by default or drawn from a seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence

import numpy as np
import torch

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.privacy.frequency_frontend import FREQS, NUM_CHANNELS, NUM_COLOURS

#: DCTDP drops the DC coefficient of each colour component.
DCTDP_DROPPED: tuple[int, ...] = (0,)
#: DuetFace's client ("crucial") frequencies: (0,0)..(0,5), (1,0), (1,1), (2,0), (3,0). Not zig-zag.
DUETFACE_CLIENT: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 8, 9, 16, 24)
#: PartialFace's pruned frequencies: exactly the triangle v + u <= 3 (the first 10 in zig-zag order).
PARTIALFACE_PRUNED: tuple[int, ...] = (0, 1, 2, 3, 8, 9, 10, 16, 17, 24)

#: TFace's PartialFace selection table: 6 subsets of 9 positions in the 54 kept frequencies (a partition).
TFACE_SUBSETS: tuple[tuple[int, ...], ...] = (
    (1, 24, 28, 12, 32, 45, 47, 40, 52),
    (35, 39, 44, 42, 10, 4, 37, 31, 53),
    (0, 50, 19, 6, 22, 51, 49, 23, 21),
    (38, 8, 25, 13, 17, 30, 7, 33, 9),
    (26, 29, 16, 2, 43, 14, 5, 11, 48),
    (36, 41, 46, 34, 15, 27, 18, 20, 3),
)
#: TFace's PartialFace permutations of the 9 slots (the same for Y, Cb and Cr).
TFACE_PERMUTATIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8),
    (7, 3, 0, 6, 5, 4, 1, 2, 8),
    (4, 8, 6, 0, 2, 5, 3, 7, 1),
)


def complement(frequencies: Sequence[int]) -> tuple[int, ...]:
    """The frequencies 0..63 not in ``frequencies``, ascending."""
    drop = set(int(k) for k in frequencies)
    return tuple(k for k in range(FREQS) if k not in drop)


def expand(frequencies: Sequence[int]) -> tuple[int, ...]:
    """Per-colour frequencies -> channel indices of the 192, colour-major (Y block, Cb block, Cr block)."""
    return tuple(FREQS * c + int(k) for c in range(NUM_COLOURS) for k in frequencies)


def _check_coeffs(coeffs: torch.Tensor) -> None:
    if not isinstance(coeffs, torch.Tensor) or coeffs.dim() != 4 or coeffs.shape[1] != NUM_CHANNELS:
        shape = tuple(coeffs.shape) if isinstance(coeffs, torch.Tensor) else type(coeffs).__name__
        raise FacesynthError(f"expected frontend output of shape (B, {NUM_CHANNELS}, H, W), got {shape}")


class ChannelPolicy:
    """A fixed channel selection: ``select`` keeps ``channels`` (in that order), ``scatter`` zero-fills back."""

    name = "policy"

    def __init__(self, channels: Sequence[int]):
        self.channels = tuple(int(c) for c in channels)
        if len(set(self.channels)) != len(self.channels) or not all(
            0 <= c < NUM_CHANNELS for c in self.channels
        ):
            raise ConfigError(
                f"{self.name}: channel list must be distinct indices in 0..191, got {self.channels}"
            )

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def select(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, 192, H, W) -> (B, len(channels), H, W)."""
        _check_coeffs(coeffs)
        index = torch.tensor(self.channels, device=coeffs.device)
        return coeffs.index_select(1, index)

    def scatter(self, kept: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`select` with zeros in the dropped channels: -> (B, 192, H, W)."""
        if kept.dim() != 4 or kept.shape[1] != self.num_channels:
            raise FacesynthError(
                f"{self.name}: expected (B, {self.num_channels}, H, W), got {tuple(kept.shape)}"
            )
        out = kept.new_zeros(kept.shape[0], NUM_CHANNELS, *kept.shape[2:])
        index = torch.tensor(self.channels, device=kept.device)
        return out.index_copy(1, index, kept)


class IdentityPolicy(ChannelPolicy):
    """All 192 channels (MinusFace's input, and the "ArcFace-FD" baseline)."""

    name = "identity"

    def __init__(self) -> None:
        super().__init__(range(NUM_CHANNELS))


class DropDCPolicy(ChannelPolicy):
    """DCTDP: every frequency but DC, 63 x 3 = 189 channels."""

    name = "drop_dc"

    def __init__(self) -> None:
        super().__init__(expand(complement(DCTDP_DROPPED)))


class SplitPolicy(ChannelPolicy):
    """DuetFace: ``channels`` are the server's (162), ``client_channels`` stay on the client (30)."""

    name = "split"

    def __init__(self, client_frequencies: Sequence[int] = DUETFACE_CLIENT):
        self.client_frequencies = tuple(sorted(int(k) for k in client_frequencies))
        super().__init__(expand(complement(self.client_frequencies)))
        self.client_channels = expand(self.client_frequencies)

    def split(self, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 192, H, W) -> (server (B, 162, H, W), client (B, 30, H, W))."""
        _check_coeffs(coeffs)
        client = coeffs.index_select(1, torch.tensor(self.client_channels, device=coeffs.device))
        return self.select(coeffs), client


def random_partialface_tables(
    seed: int, num_subsets: int = 6, subset_size: int = 9, num_permutations: int = 3, num_kept: int = 54
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Seeded selection and permutation tables of the same form as TFace's.

    The subsets partition the first ``num_subsets * subset_size`` of a random permutation of the
    ``num_kept`` positions (a full partition when the product equals ``num_kept``); the first
    permutation is the identity, as in TFace, the others random.
    """
    if num_subsets * subset_size > num_kept:
        raise ConfigError(f"{num_subsets} subsets of {subset_size} do not fit in {num_kept} kept frequencies")
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_kept)
    subsets = tuple(
        tuple(int(p) for p in order[i * subset_size : (i + 1) * subset_size]) for i in range(num_subsets)
    )
    perms = [tuple(range(subset_size))]
    perms += [tuple(int(p) for p in rng.permutation(subset_size)) for _ in range(num_permutations - 1)]
    return subsets, tuple(perms)


class PartialFacePolicy(ChannelPolicy):
    """PartialFace: prune v + u <= 3, then one permuted 9-frequency subset per colour component per query.

    Args:
        subsets: selection table S, positions 0..53 in the kept (ascending-k) frequencies; TFace's six
            subsets of nine by default.
        permutations: permutation table P over the ``subset_size`` slots; output slot t carries subset
            entry ``perm[t]`` (a gather). TFace's three by default. Whether TFace gathers or scatters
            is unverified here; the two differ by inverting each permutation, which changes nothing
            for a model trained with this code (only the slot order a TFace checkpoint expects).
        pruned: the pruned frequencies (the v + u <= 3 triangle).
        subsets_per_identity: r, how many subsets each identity may use in training when the draw is
            label-conditioned (TFace: 3 of 6, chosen by ``label mod C(6, 3)`` from the lexicographic
            list of combinations).

    ``channels`` lists the 162 kept channels (the union over subsets); :meth:`select_random` produces
    the 27-channel payload.
    """

    name = "partialface"

    def __init__(
        self,
        subsets: Sequence[Sequence[int]] = TFACE_SUBSETS,
        permutations: Sequence[Sequence[int]] = TFACE_PERMUTATIONS,
        pruned: Sequence[int] = PARTIALFACE_PRUNED,
        subsets_per_identity: int = 3,
    ):
        self.pruned = tuple(sorted(int(k) for k in pruned))
        self.kept_frequencies = complement(self.pruned)
        super().__init__(expand(self.kept_frequencies))
        num_kept = len(self.kept_frequencies)
        self.subsets = tuple(tuple(int(p) for p in s) for s in subsets)
        self.permutations = tuple(tuple(int(p) for p in s) for s in permutations)
        sizes = {len(s) for s in self.subsets}
        if len(sizes) != 1 or not self.subsets:
            raise ConfigError(
                f"partialface: subsets must be non-empty and of equal size, got sizes {sorted(sizes)}"
            )
        self.subset_size = sizes.pop()
        flat = [p for s in self.subsets for p in s]
        if len(set(flat)) != len(flat) or not all(0 <= p < num_kept for p in flat):
            raise ConfigError(f"partialface: subsets must be disjoint positions in 0..{num_kept - 1}")
        for perm in self.permutations:
            if sorted(perm) != list(range(self.subset_size)):
                raise ConfigError(f"partialface: {perm} is not a permutation of 0..{self.subset_size - 1}")
        if not 1 <= subsets_per_identity <= len(self.subsets):
            raise ConfigError(
                f"partialface: subsets_per_identity must be in 1..{len(self.subsets)}, got {subsets_per_identity}"
            )
        self.subsets_per_identity = int(subsets_per_identity)
        self.combinations = tuple(itertools.combinations(range(len(self.subsets)), self.subsets_per_identity))
        # index[s, p, :] = the 27 channels (colour-major) of subset s under permutation p
        table = np.zeros(
            (len(self.subsets), len(self.permutations), NUM_COLOURS * self.subset_size), dtype=np.int64
        )
        for s, subset in enumerate(self.subsets):
            for p, perm in enumerate(self.permutations):
                freqs = [self.kept_frequencies[subset[perm[t]]] for t in range(self.subset_size)]
                table[s, p] = [FREQS * c + k for c in range(NUM_COLOURS) for k in freqs]
        self.index_table = torch.from_numpy(table)

    @property
    def payload_channels(self) -> int:
        return NUM_COLOURS * self.subset_size

    def table_id(self) -> str:
        """A short hash of the tables: payloads made with other tables are refused by the server."""
        blob = json.dumps([self.pruned, self.subsets, self.permutations]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def draw(
        self,
        batch_size: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(subset ids, permutation ids), each (B,) int64 on the CPU.

        With ``labels`` (training, label-conditioned as in TFace) the subset is uniform over
        ``combinations[label mod len(combinations)]``; without (inference, "choose 1") it is uniform
        over all subsets. The permutation is uniform in both cases.
        """
        perm_ids = torch.randint(len(self.permutations), (batch_size,), generator=generator)
        if labels is None:
            subset_ids = torch.randint(len(self.subsets), (batch_size,), generator=generator)
        else:
            combos = torch.tensor(self.combinations, dtype=torch.int64)
            allowed = combos[labels.detach().to("cpu", torch.int64) % len(self.combinations)]  # (B, r)
            pick = torch.randint(self.subsets_per_identity, (batch_size,), generator=generator)
            subset_ids = allowed.gather(1, pick[:, None])[:, 0]
        return subset_ids, perm_ids

    def select_subsets(
        self, coeffs: torch.Tensor, subset_ids: torch.Tensor, perm_ids: torch.Tensor
    ) -> torch.Tensor:
        """(B, 192, H, W) -> (B, 27, H, W): per sample its subset under its permutation (one gather)."""
        _check_coeffs(coeffs)
        index = self.index_table[subset_ids.cpu(), perm_ids.cpu()].to(coeffs.device)  # (B, 27)
        b = coeffs.shape[0]
        rows = torch.arange(b, device=coeffs.device)[:, None]
        return coeffs[rows, index]

    def select_random(
        self,
        coeffs: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw (see :meth:`draw`) and select: the 27-channel PartialFace input."""
        subset_ids, perm_ids = self.draw(coeffs.shape[0], labels, generator)
        return self.select_subsets(coeffs, subset_ids, perm_ids)
