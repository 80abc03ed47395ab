"""Verification pairs built from held-out shards, written as a `.bin` that the benchmark loader reads."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.core.errors import ConfigError, FacesynthError, ShardError
from facesynth.core.shard_format import ShardRow
from facesynth.pipelines.cli import main
from facesynth.pipelines.pairs import verification_set_from_shards, write_pairs_bin
from facesynth.recognizers.benchmark_files import load_verification_set
from facesynth.tests.shard_fixtures import write_dataset


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
    write_dataset(folder, [rows])
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


# ---- issues 11.9, 13.5, 13.9: exact counts or a reason, a clear --out, atomic writes, termination


def test_num_pairs_is_exact_or_refused_with_the_numbers(tmp_path):
    data = _dataset(tmp_path / "d", 10, 4)  # 60 genuine, 720 impostor pairs available
    assert verification_set_from_shards(data, num_pairs=120, seed=0).num_pairs == 120
    with pytest.raises(ShardError, match=r"allow 60 genuine and 720 impostor pairs; ask for at most 120"):
        verification_set_from_shards(data, num_pairs=1000)
    with pytest.raises(ConfigError, match="even"):
        verification_set_from_shards(data, num_pairs=11)


def test_imbalanced_identities_terminate(tmp_path):
    """One identity holds almost every image: the old rejection sampler looped for ever."""
    rows = [
        ShardRow(image=np.full((112, 112, 3), 7, np.uint8), label=0, identity="big", index=i)
        for i in range(60)
    ]
    rows.append(ShardRow(image=np.full((112, 112, 3), 9, np.uint8), label=1, identity="lone", index=0))
    write_dataset(tmp_path / "d", [rows])
    pairs = verification_set_from_shards(
        tmp_path / "d", num_pairs=120, seed=0
    )  # 60 impostors exist: all used
    assert pairs.num_pairs == 120 and (~pairs.issame).sum() == 60
    with pytest.raises(ShardError, match="at most 120"):
        verification_set_from_shards(tmp_path / "d", num_pairs=122)


def test_out_folder_and_unmanifested_dataset_are_clear_errors(tmp_path, capsys):
    data = _dataset(tmp_path / "d", 4, 3)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FacesynthError, match="is a folder; give a file name"):
        write_pairs_bin(data, tmp_path / "runs", num_pairs=10)
    (data / "facesynth.json").unlink()
    with pytest.raises(ShardError, match="manifest is missing .*facesynth verify"):
        write_pairs_bin(data, tmp_path / "p.bin", num_pairs=10)
    assert write_pairs_bin(data, tmp_path / "p.bin", num_pairs=10, allow_plain_parquet=True).is_file()
    # the command line: refused with exit 2 unless --allow-plain-parquet (issue 13.3)
    argv = ["pairs", str(data), "--out", str(tmp_path / "c.bin"), "--num-pairs", "10"]
    assert main(argv) == 2 and "--allow-plain-parquet" in capsys.readouterr().err
    assert not (tmp_path / "c.bin").exists()
    assert main([*argv, "--allow-plain-parquet"]) == 0 and (tmp_path / "c.bin").is_file()


def test_failed_write_keeps_the_previous_bin(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "d", 4, 3)
    good = write_pairs_bin(data, tmp_path / "p.bin", num_pairs=10)
    before = good.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("facesynth.core.atomic_io.os.replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_pairs_bin(data, good, num_pairs=20, seed=5)
    assert good.read_bytes() == before and not list(tmp_path.glob(".p.bin.*.tmp"))


def test_corrupt_image_is_named(tmp_path):
    rows = [
        ShardRow(image=b"not an image", label=i // 2, identity=str(i // 2), index=i % 2) for i in range(6)
    ]
    write_dataset(tmp_path / "d", [rows])
    with pytest.raises(ShardError, match="does not decode"):
        write_pairs_bin(tmp_path / "d", tmp_path / "p.bin", num_pairs=4)
    assert not (tmp_path / "p.bin").exists()
