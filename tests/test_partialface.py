"""PartialFace: pruning, subset/permutation tables, label-conditioned training draws, label-free queries."""

from __future__ import annotations

import pytest
import torch

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.privacy.channel_policies import (
    DUETFACE_CLIENT,
    PARTIALFACE_PRUNED,
    TFACE_PERMUTATIONS,
    TFACE_SUBSETS,
    DropDCPolicy,
    IdentityPolicy,
    PartialFacePolicy,
    SplitPolicy,
    complement,
    random_partialface_tables,
)
from facesynth.privacy.partialface import PartialFace
from facesynth.recognizers.methods import build_method

SMALL = {"input_size": [16, 16]}


def test_pruned_set_is_the_low_frequency_triangle() -> None:
    assert tuple(sorted(8 * v + u for v in range(8) for u in range(8) if v + u <= 3)) == PARTIALFACE_PRUNED
    kept = complement(PARTIALFACE_PRUNED)
    assert len(kept) == 54 and list(kept) == sorted(kept)


def test_tface_subsets_partition_the_54_kept_channels() -> None:
    positions = [p for subset in TFACE_SUBSETS for p in subset]
    assert sorted(positions) == list(range(54))
    kept = complement(PARTIALFACE_PRUNED)
    # TFace's table of DCT frequencies for subset 0 (recognition/tasks/partialface/utils.py)
    assert [kept[p] for p in TFACE_SUBSETS[0]] == [5, 34, 38, 21, 42, 55, 57, 50, 62]
    policy = PartialFacePolicy()
    channels = policy.index_table[:, 0].flatten().tolist()  # identity permutation, every subset
    assert len(channels) == len(set(channels)) == 162
    assert sorted(channels) == sorted(policy.channels)
    assert all(c % 64 not in PARTIALFACE_PRUNED for c in channels)
    # every subset takes the same 9 frequencies in each colour component, colour-major
    for s in range(6):
        row = policy.index_table[s, 0].tolist()
        assert [c - 64 for c in row[9:18]] == row[:9] and [c - 128 for c in row[18:]] == row[:9]


def test_permutation_is_a_gather_of_the_subset() -> None:
    policy = PartialFacePolicy()
    coeffs = torch.arange(192, dtype=torch.float32).view(1, 192, 1, 1).expand(2, 192, 3, 3).contiguous()
    kept = complement(PARTIALFACE_PRUNED)
    out = policy.select_subsets(coeffs, torch.tensor([4, 1]), torch.tensor([2, 1]))
    assert out.shape == (2, 27, 3, 3)
    for b, (s, p) in enumerate([(4, 2), (1, 1)]):
        expected = [kept[TFACE_SUBSETS[s][TFACE_PERMUTATIONS[p][t]]] for t in range(9)]
        assert out[b, :9, 0, 0].tolist() == expected
        assert out[b, 9:18, 0, 0].tolist() == [64 + k for k in expected]


def test_label_conditioned_draw_restricts_subsets_per_identity() -> None:
    policy = PartialFacePolicy()
    assert len(policy.combinations) == 20 and policy.combinations[0] == (0, 1, 2)
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 7, 27] * 200)
    subsets, perms = policy.draw(len(labels), labels, gen)
    for label in (0, 7, 27):
        used = set(subsets[labels == label].tolist())
        assert used == set(policy.combinations[label % 20])
    assert set(perms.tolist()) == {0, 1, 2}
    free, _ = policy.draw(600, None, gen)  # inference: label-free, every subset
    assert set(free.tolist()) == set(range(6))


def test_random_tables_are_seeded_partitions() -> None:
    a = random_partialface_tables(3)
    assert a == random_partialface_tables(3) and a != random_partialface_tables(4)
    subsets, perms = a
    assert sorted(p for s in subsets for p in s) == list(range(54))
    assert perms[0] == tuple(range(9)) and all(sorted(p) == list(range(9)) for p in perms)
    with pytest.raises(ConfigError, match="do not fit"):
        random_partialface_tables(0, num_subsets=7)


def test_other_policies() -> None:
    x = torch.randn(2, 192, 4, 4)
    assert IdentityPolicy().num_channels == 192
    drop = DropDCPolicy()
    assert drop.num_channels == 189 and 0 not in drop.channels and 64 not in drop.channels
    assert torch.equal(drop.scatter(drop.select(x))[:, 1:64], x[:, 1:64])
    split = SplitPolicy()
    server, client = split.split(x)
    assert server.shape[1] == 162 and client.shape[1] == 30
    assert split.client_channels[:10] == DUETFACE_CLIENT
    assert set(split.channels).isdisjoint(split.client_channels)
    with pytest.raises(FacesynthError, match=r"\(B, 192, H, W\)"):
        drop.select(torch.randn(2, 189, 4, 4))
    with pytest.raises(ConfigError, match="disjoint"):
        PartialFacePolicy(subsets=[(0, 1), (1, 2)], permutations=[(0, 1)])


def test_partialface_method_training_and_label_free_queries() -> None:
    method = build_method("partialface", "tiny", SMALL)
    assert isinstance(method, PartialFace) and method.backbone.conv1.in_channels == 27
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    method.train()
    emb, aux = method(x, torch.tensor([0, 0, 1, 1]))
    assert emb.shape == (4, 128) and aux == {}
    method.eval()
    p1, p2, p3 = method.protect(x, seed=5), method.protect(x, seed=5), method.protect(x, seed=6)
    assert p1.tensor.shape == (4, 27, 16, 16)
    assert torch.equal(p1.tensor, p2.tensor) and not torch.equal(p1.tensor, p3.tensor)
    # the payload is a 27-channel subset of the frontend's high-frequency output, never the pruned part
    coeffs = method.frontend(x)
    pruned = {64 * c + k for c in range(3) for k in PARTIALFACE_PRUNED}
    for b in range(4):
        for ch in range(27):
            matches = [i for i in range(192) if torch.equal(coeffs[b, i], p1.tensor[b, ch])]
            assert matches and not set(matches) & pruned
    assert method.recognize(p1).shape == (4, 128)


def test_random_tables_change_the_key() -> None:
    a = build_method("partialface", "tiny", SMALL, tables="random", key_seed=1)
    b = build_method("partialface", "tiny", SMALL, tables="random", key_seed=2)
    c = build_method("partialface", "tiny", SMALL)  # TFace tables
    assert len({a.key_id(), b.key_id(), c.key_id()}) == 3
    assert a.policy.subsets != b.policy.subsets
    payload = a.eval().protect(torch.rand(2, 3, 16, 16) * 2 - 1, seed=0)
    with pytest.raises(FacesynthError, match="client key"):
        b.eval().recognize(payload)
    with pytest.raises(ConfigError, match="tables must be one of"):
        build_method("partialface", "tiny", SMALL, tables="zigzag")
