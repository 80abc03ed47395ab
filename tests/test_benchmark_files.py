"""Benchmark files: .bin in all three pickle variants, refusal of code-carrying pickles, pairs.txt folders."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.benchmark_files import (
    UnsafePickleError,
    find_benchmarks,
    load_bin,
    load_pairs_folder,
    load_verification_set,
    write_bin,
)


def _faces(n: int, size: int = 112, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("variant", ["bytes", "numpy", "py2", "py2-numpy"])
def test_bin_round_trip_every_variant(tmp_path, variant):
    images = _faces(6)
    issame = [True, False, True]
    path = write_bin(tmp_path / f"{variant}.bin", images, issame, variant=variant, image_format="PNG")
    bench = load_bin(path)
    assert bench.name == variant
    assert bench.num_pairs == 3 and len(bench) == 6
    assert bench.issame.tolist() == issame
    np.testing.assert_array_equal(bench.load_images(range(6)), np.stack(images))


def test_py2_variant_really_needs_bytes_encoding(tmp_path):
    # a str holding JPEG bytes cannot be decoded as ASCII: the loader must fall back to encoding="bytes"
    path = write_bin(tmp_path / "py2.bin", _faces(2), [False], variant="py2", image_format="JPEG")
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())
    bench = load_bin(path)
    assert bench.load_image(0).shape == (112, 112, 3)


class _SystemPayload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalPayload:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize("payload_kind", ["system_top", "system_nested", "eval_nested"])
def test_code_carrying_pickle_is_refused_without_running(tmp_path, payload_kind):
    marker = tmp_path / "payload_ran"
    if payload_kind == "system_top":
        obj = _SystemPayload(f"touch {marker}")
    elif payload_kind == "system_nested":
        obj = ([b"\xff\xd8", _SystemPayload(f"touch {marker}")], [True])
    else:
        obj = ([b"x", b"y"], [_EvalPayload(f"open({str(marker)!r}, 'w').close()")])
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(UnsafePickleError, match="refused to load global"):
        load_bin(path)
    assert not marker.exists()
    # sanity: the payload is real (plain pickle would have run it)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_bin_structure_errors(tmp_path):
    bad = tmp_path / "dict.bin"
    bad.write_bytes(pickle.dumps({"bins": []}))
    with pytest.raises(FacesynthError, match="expected a pickled"):
        load_bin(bad)
    uneven = tmp_path / "uneven.bin"
    uneven.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(FacesynthError, match="3 images for 1 pairs"):
        load_bin(uneven)
    floats = tmp_path / "floats.bin"
    floats.write_bytes(pickle.dumps(([np.zeros(4, np.float32), np.zeros(4, np.float32)], [True])))
    with pytest.raises(FacesynthError, match="expected encoded image bytes"):
        load_bin(floats)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(FacesynthError, match="not a readable"):
        load_bin(junk)
    with pytest.raises(FacesynthError, match="not found"):
        load_bin(tmp_path / "missing.bin")


def test_wrong_size_and_corrupt_images_are_named(tmp_path):
    images = _faces(2, size=100)
    bench = load_bin(write_bin(tmp_path / "small.bin", images, [True], image_format="PNG"))
    with pytest.raises(FacesynthError, match=r"100x100, expected an aligned 112x112"):
        bench.load_image(1)
    from facesynth.recognizers.alignment import NoneAligner

    bench.aligner = NoneAligner(mode="resize")  # an aligner turns other sizes into aligned crops
    assert bench.load_image(1).shape == (112, 112, 3)
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(pickle.dumps(([b"garbage", b"garbage"], [False])))
    with pytest.raises(FacesynthError, match="image #0: cannot decode"):
        load_bin(corrupt).load_image(0)


def _people_tree(root, names_counts, ext=".jpg"):
    faces = iter(_faces(sum(names_counts.values()), seed=1))
    for name, count in names_counts.items():
        (root / name).mkdir(parents=True)
        for i in range(1, count + 1):
            Image.fromarray(next(faces)).save(root / name / f"{name}_{i:04d}{ext}")


def test_pairs_folder_lfw_format(tmp_path):
    _people_tree(tmp_path, {"Ann_A": 2, "Bob_B": 1})
    Image.fromarray(_faces(1, seed=3)[0]).save(tmp_path / "Bob_B" / "Bob_B_0002.png")  # any extension
    (tmp_path / "pairs.txt").write_text("1\t2\nAnn_A\t1\t2\nBob_B 1 2\nAnn_A\t2\tBob_B\t1\n")
    bench = load_verification_set(tmp_path)
    assert bench.issame.tolist() == [True, True, False]
    assert [p.name for p in bench.sources] == [
        "Ann_A_0001.jpg",
        "Ann_A_0002.jpg",
        "Bob_B_0001.jpg",
        "Bob_B_0002.png",
        "Ann_A_0002.jpg",
        "Bob_B_0001.jpg",
    ]
    assert bench.load_images([0, 3]).shape == (2, 112, 112, 3)


def test_pairs_folder_errors_name_file_and_line(tmp_path):
    _people_tree(tmp_path, {"Ann_A": 1})
    (tmp_path / "pairs.txt").write_text("10 300\nAnn_A 1 7\n")
    with pytest.raises(FacesynthError, match=r"pairs.txt:2: image 7 of 'Ann_A' not found"):
        load_pairs_folder(tmp_path)
    (tmp_path / "pairs.txt").write_text("Ann_A 1\n")
    with pytest.raises(FacesynthError, match=r"pairs.txt:1: expected 'name n1 n2'"):
        load_pairs_folder(tmp_path)
    with pytest.raises(FacesynthError, match="pairs file not found"):
        load_pairs_folder(tmp_path / "Ann_A")


def test_find_benchmarks_keeps_standard_order(tmp_path):
    for name in ("agedb_30", "lfw"):
        write_bin(tmp_path / f"{name}.bin", _faces(2), [True])
    assert [p.stem for p in find_benchmarks(tmp_path)] == ["lfw", "agedb_30"]


# ---- issue 13.7: tiny hostile .bin files cannot make the loader allocate more than they carry


def _np_reconstruct_pickle(shape: int, dtype: bytes = b"u1") -> bytes:
    """_reconstruct(ndarray, (shape,), b'b') as a protocol-2 pickle: allocates shape x itemsize bytes."""
    return (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"J"
        + shape.to_bytes(4, "little")
        + b"\x85C\x01b\x87R"
        + b"cnumpy\ndtype\nX"
        + len(dtype).to_bytes(4, "little")
        + dtype
        + b"K\x00K\x01\x87R\x86."
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_np_reconstruct_pickle(2_000_000_000), "would allocate 2,000,000,000 bytes"),
        (_np_reconstruct_pickle(4, b"O"), "object"),
        (_np_reconstruct_pickle(1, b"V100000000"), "dtype"),
        (b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b"abc.", "not a readable"),  # BYTEARRAY8
        (b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x7f\x85R.", "bytearray"),
        (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x7f\x85R.", "numpy.ndarray directly"),
        (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.", "refused to load global os.system"),
    ],
)
def test_hostile_bin_is_refused_before_allocating(tmp_path, data, message):
    import resource

    path = tmp_path / "hostile.bin"
    path.write_bytes(data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FacesynthError, match=message):
        load_bin(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: no big allocation
