"""Verification pairs built from held-out shards, written as a `.bin` that the benchmark loader reads."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.core.errors import ShardError
from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.pipelines.cli import main
from facesynth.pipelines.pairs import verification_set_from_shards, write_pairs_bin
from facesynth.recognizers.benchmark_files import load_verification_set


def _dataset(folder, identities: int, per_identity: int):
    rows = [
        ShardRow(
            image=np.full((112, 112, 3), label * 10 + index, np.uint8),
            label=label,
            identity=str(label),
            index=index,
        )
        for label in range(identities)
        for index in range(per_identity)
    ]
    write_shard(folder / shard_name(0, 1), rows_to_table(rows, None))
    return folder


def _label_of(image: np.ndarray) -> int:
    return int(image[0, 0, 0]) // 10


def test_pairs_are_balanced_and_correctly_labelled(tmp_path):
    pairs = verification_set_from_shards(_dataset(tmp_path, 6, 4), num_pairs=40, seed=3)
    assert pairs.num_pairs == 40 and pairs.issame.sum() == 20
    for fold in np.array_split(pairs.issame, 10):  # every contiguous fold is balanced
        assert fold.sum() * 2 == len(fold)
    for i, same in enumerate(pairs.issame):
        a, b = pairs.load_image(2 * i), pairs.load_image(2 * i + 1)
        assert (_label_of(a) == _label_of(b)) == bool(same)
        assert not np.array_equal(a, b)  # never an image paired with itself


def test_bin_round_trip_is_lossless(tmp_path):
    data = _dataset(tmp_path / "d", 5, 3)
    expected = verification_set_from_shards(data, num_pairs=20, seed=1)
    loaded = load_verification_set(write_pairs_bin(data, tmp_path / "p.bin", num_pairs=20, seed=1))
    np.testing.assert_array_equal(loaded.issame, expected.issame)
    for i in range(len(loaded)):
        np.testing.assert_array_equal(loaded.load_image(i), expected.load_image(i))


def test_too_few_identities_or_images(tmp_path):
    with pytest.raises(ShardError, match="at least 2 identities"):
        verification_set_from_shards(_dataset(tmp_path / "a", 1, 4))
    with pytest.raises(ShardError, match="no genuine pairs"):
        verification_set_from_shards(_dataset(tmp_path / "b", 4, 1))


def test_cli(tmp_path, capsys):
    data = _dataset(tmp_path / "d", 4, 3)
    assert main(["pairs", str(data), "--out", str(tmp_path / "x.bin"), "--num-pairs", "10"]) == 0
    assert load_verification_set(tmp_path / "x.bin").num_pairs == 10
    assert main(["pairs", str(data), "--out", str(tmp_path / "y.bin"), "--num-pairs", "1"]) == 2
    assert "--num-pairs: bad value 1" in capsys.readouterr().err
