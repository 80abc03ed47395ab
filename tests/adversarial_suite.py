"""A reproducible adversarial suite: build hostile inputs, feed them to the stages, count the outcomes.

Each case makes its input in a fresh folder and runs one action. A case is *handled* when the action
refuses with a :class:`~facesynth.core.errors.FacesynthError` (or, for checks that report instead of
raising, returns the expected problem) and leaves no partial output; anything else (a traceback, a
hang, a silent success) is *failed*. Run ``python -m facesynth.tests.adversarial_suite`` for the table;
``tests/test_adversarial_suite.py`` runs it in CI at toy size and requires 0 failed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesynth.core.errors import FacesynthError


@dataclass
class Outcome:
    name: str
    handled: bool
    detail: str


def _expect_error(action: Callable[[], object], *, contains: str = "") -> tuple[bool, str]:
    try:
        action()
    except FacesynthError as exc:
        text = str(exc)
        return (contains.lower() in text.lower(), text.splitlines()[0][:150])
    except Exception as exc:  # noqa: BLE001 - exactly what the suite hunts for
        return False, f"{type(exc).__name__}: {exc}"[:150]
    return False, "accepted silently"


# ---------------------------------------------------------------- datasets and manifests


def _base_dataset(folder: Path) -> Path:
    from facesynth.tests.shard_fixtures import face_rows, write_dataset

    write_dataset(folder, [face_rows([0, 0, 1, 1]), face_rows([2, 2, 3, 3])])
    return folder


def _manifest_edit(change: Callable[[dict], object]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        _base_dataset(folder)
        path = folder / "facesynth.json"
        data = json.loads(path.read_text())
        data = change(data) or data
        path.write_text(json.dumps(data))
        return folder

    return build


def _unlink_shard(folder: Path) -> Path:
    _base_dataset(folder)
    (folder / "data" / "train-00001-of-00002.parquet").unlink()
    return folder


def _extra_shard(folder: Path) -> Path:
    _base_dataset(folder)
    shutil.copy(
        folder / "data" / "train-00000-of-00002.parquet", folder / "data" / "train-00009-of-00010.parquet"
    )
    return folder


def _unfinished(folder: Path) -> Path:
    _base_dataset(folder)
    (folder / "facesynth.json").unlink()
    (folder / ".facesynth").mkdir(exist_ok=True)
    (folder / ".facesynth" / "plan.json").write_text("{}")
    return folder


def _labels(folder: Path) -> Path:
    from facesynth.tests.shard_fixtures import face_rows, write_dataset

    write_dataset(folder, [face_rows([0, 1, 10**9])], num_identities=2)
    data = json.loads((folder / "facesynth.json").read_text())
    data["shards"][0]["label_stop"] = 2
    (folder / "facesynth.json").write_text(json.dumps(data))
    return folder


def _tiny_images(folder: Path) -> Path:
    from facesynth.tests.shard_fixtures import face_rows, write_dataset

    write_dataset(folder, [face_rows([0, 1], size=1)])
    return folder


def _linked_shard(folder: Path) -> Path:
    _base_dataset(folder)
    shard = folder / "data" / "train-00000-of-00002.parquet"
    outside = folder.parent / f"{folder.name}-outside.parquet"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    return folder


DATASET_CASES: dict[str, Callable[[Path], Path]] = {
    "manifest is a JSON list": _manifest_edit(lambda d: [d]),
    "manifest num_rows is a string": _manifest_edit(lambda d: d.update(num_rows="8")),
    "manifest shards is an object": _manifest_edit(lambda d: d.update(shards={"a": 1})),
    "manifest label_start is null": _manifest_edit(lambda d: d["shards"][0].update(label_start=None)),
    "manifest shard path ../outside": _manifest_edit(
        lambda d: d["shards"][0].update(file="../outside/x.parquet")
    ),
    "manifest shard path absolute": _manifest_edit(lambda d: d["shards"][0].update(file="/etc/passwd")),
    "manifest sha256 is a number": _manifest_edit(lambda d: d["shards"][0].update(sha256=5)),
    "manifest num_identities is a bool": _manifest_edit(lambda d: d.update(num_identities=True)),
    "manifest is not JSON": lambda f: (_base_dataset(f), (f / "facesynth.json").write_text("{nope"))[0],
    "listed shard missing": _unlink_shard,
    "unlisted extra shard": _extra_shard,
    "folder still being generated": _unfinished,
    "label 10^9 in a 2-identity set": _labels,
    "1x1 images": _tiny_images,
    "shard is a link to outside": _linked_shard,
}


def _dataset_case(name: str, build: Callable[[Path], Path], root: Path) -> Outcome:
    from facesynth.core.integrity import verify_dataset
    from facesynth.core.shard_reader import ShardDataset, read_columns

    folder = build(root / "ds")
    problems = verify_dataset(folder)
    if not problems:
        return Outcome(f"dataset: {name} (verify)", False, "verify passed it")
    ok, detail = _expect_error(lambda: list(ShardDataset(folder)) and read_columns(folder, ["label"]))
    if name == "1x1 images":  # readable shards whose images are wrong: verify is the gate
        ok, detail = True, problems[0][:150]
    return Outcome(f"dataset: {name}", ok, detail)


# ---------------------------------------------------------------- hostile .bin files


def _reconstruct(shape: int, dtype: bytes = b"u1") -> bytes:
    return (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ"
        + shape.to_bytes(4, "little")
        + b"\x85C\x01b\x87Rcnumpy\ndtype\nX"
        + len(dtype).to_bytes(4, "little")
        + dtype
        + b"K\x00K\x01\x87R\x86."
    )


BIN_CASES: dict[str, bytes] = {
    "_reconstruct of 2 GB": _reconstruct(2_000_000_000),
    "object dtype array": _reconstruct(4, b"O"),
    "100 MB void dtype": _reconstruct(1, b"V100000000"),
    "BYTEARRAY8 claiming 2^40 bytes": b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b"abc.",
    "bytearray(2 GB)": b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x7f\x85R.",
    "ndarray(huge) called directly": b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x7f\x85R.",
    "os.system global": b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.",
    "truncated pickle": b"\x80\x04\x95\x10\x00\x00\x00",
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8)),
    "empty file": b"",
}


def _bin_case(name: str, data: bytes, root: Path) -> Outcome:
    from facesynth.recognizers.benchmark_files import load_bin

    path = root / "x.bin"
    path.write_bytes(data)
    ok, detail = _expect_error(lambda: load_bin(path))
    return Outcome(f".bin: {name}", ok, detail)


# ---------------------------------------------------------------- privacy payloads


def _payload_cases() -> list[Outcome]:
    import torch

    import facesynth.privacy  # noqa: F401 - registers the methods
    from facesynth.privacy.api import build_privacy_method
    from facesynth.privacy.payload import Payload

    method = build_privacy_method("dctdp", "tiny", {"input_size": [16, 16]}).eval()
    good = method.protect(torch.rand(2, 3, 16, 16) * 2 - 1, seed=0)
    changes = {
        "NaN": lambda t: t.clone().fill_(float("nan")),
        "inf": lambda t: t.clone().fill_(float("inf")),
        "1e38": lambda t: t.clone().fill_(1e38),
        "float64": lambda t: t.double(),
        "float16": lambda t: t.half(),
        "int8": lambda t: t.to(torch.int8),
        "bool": lambda t: t > 0,
    }
    outcomes = []
    for name, change in changes.items():
        bad = Payload(good.tensor.clone(), good.header)
        object.__setattr__(bad, "tensor", change(good.tensor))
        ok, detail = _expect_error(lambda bad=bad: method.recognize(bad))
        outcomes.append(Outcome(f"payload: {name} values", ok, detail))
    bad = Payload(good.tensor.clone(), good.header)
    object.__setattr__(bad, "extras", [])
    ok, detail = _expect_error(lambda: method.recognize(bad))
    outcomes.append(Outcome('payload: "extras": []', ok, detail))
    ok, detail = _expect_error(lambda: Payload.from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00[]      "))
    outcomes.append(Outcome("payload: foreign blob", ok, detail))
    return outcomes


# ---------------------------------------------------------------- configs, absurd sizes, writers


def _generate_cases(root: Path) -> list[Outcome]:
    from facesynth.core.config import load_config_file
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset

    cases = {
        "unknown generator": dict(generator="foo"),
        "-o pipeline= for parametric": dict(options={"pipeline": "x"}),
        "-o image_size=1": dict(options={"image_size": 1}),
        "-o unknown key": dict(options={"nope": 1}),
        "--identities 10^9": dict(identities=10**9),
        "--per-identity 10^9": dict(per_identity=10**9),
    }
    outcomes = []
    for i, (name, change) in enumerate(cases.items()):
        out = root / f"gen{i}"
        config = GenerateConfig.from_mapping(dict(identities=2, per_identity=2, out=out) | change)
        ok, detail = _expect_error(lambda config=config: generate_dataset(config, show_progress=False))
        outcomes.append(Outcome(f"generate: {name}", ok and not out.exists(), detail))
    mine = root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user file")
    config = GenerateConfig(identities=2, per_identity=2, out=mine)
    ok, detail = _expect_error(lambda: generate_dataset(config, show_progress=False))
    outcomes.append(
        Outcome("generate: non-empty foreign --out", ok and len(list(mine.iterdir())) == 1, detail)
    )
    bomb = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        bomb += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    (root / "bomb.yaml").write_text(bomb)
    ok, detail = _expect_error(lambda: load_config_file(root / "bomb.yaml"), contains="alias")
    outcomes.append(Outcome(f"config: {len(bomb)}-byte YAML alias bomb", ok, detail))
    from facesynth.core.config import parse_overrides

    ok, detail = _expect_error(lambda: parse_overrides(["k=[1, 2"]))
    outcomes.append(Outcome("config: bad YAML in -o", ok, detail))
    return outcomes


def _pairs_cases(root: Path) -> list[Outcome]:
    from facesynth.core.shard_format import ShardRow
    from facesynth.pipelines.pairs import write_pairs_bin
    from facesynth.tests.shard_fixtures import face_rows, write_dataset

    data = root / "pairs-ds"
    write_dataset(data, [face_rows([0, 0, 1, 1, 2, 2])])
    big = [
        ShardRow(image=np.zeros((112, 112, 3), np.uint8), label=0, identity="a", index=i) for i in range(40)
    ]
    big.append(ShardRow(image=np.zeros((112, 112, 3), np.uint8), label=1, identity="b", index=0))
    write_dataset(root / "imbalanced", [big])
    (root / "a-folder").mkdir()
    cases = {
        "--num-pairs beyond what the set allows": lambda: write_pairs_bin(data, root / "p.bin", 1000),
        "--num-pairs odd": lambda: write_pairs_bin(data, root / "p.bin", 5),
        "--out is a folder": lambda: write_pairs_bin(data, root / "a-folder", 4),
        "imbalanced identities": lambda: write_pairs_bin(root / "imbalanced", root / "p.bin", 100),
    }
    outcomes = []
    for name, action in cases.items():
        started = time.perf_counter()
        ok, detail = _expect_error(action)
        outcomes.append(Outcome(f"pairs: {name}", ok and time.perf_counter() - started < 30, detail))
    return outcomes


def _concurrent_writer_case(root: Path) -> Outcome:
    from facesynth.pipelines.generate import GenerateConfig, generate_dataset

    out = root / "contended"
    code = (
        "import time; from facesynth.core.locks import acquire; "
        f"lock = acquire({str(out)!r}, 'generate'); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        config = GenerateConfig(generator="parametric", identities=2, per_identity=2, out=out, seed=1)
        ok, detail = _expect_error(lambda: generate_dataset(config, show_progress=False), contains="pid")
    finally:
        holder.kill()
        holder.wait()
    return Outcome("writers: second generate into a locked --out", ok, detail)


def _publish_link_case(root: Path) -> Outcome:
    from facesynth.pipelines.publish import list_upload_files, select_upload

    folder = _base_dataset(root / "pub")
    (root / "secret.txt").write_text("token")
    (folder / "README.md").symlink_to(root / "secret.txt")
    files, _ = select_upload(folder, "dataset", list_upload_files(folder))
    leaked = [p for p, _ in files if p == "README.md"]
    return Outcome(
        "publish: README.md linked to a secret", not leaked, f"listed: {[p for p, _ in files]}"[:150]
    )


def run_suite(verbose: bool = True) -> list[Outcome]:
    """Run every case in a temporary folder; print one line per case and the totals."""
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="facesynth-adversarial-") as tmp:
        root = Path(tmp)
        for i, (name, build) in enumerate(DATASET_CASES.items()):
            (root / f"d{i}").mkdir()
            outcomes.append(_dataset_case(name, build, root / f"d{i}"))
        for i, (name, data) in enumerate(BIN_CASES.items()):
            (root / f"b{i}").mkdir()
            outcomes.append(_bin_case(name, data, root / f"b{i}"))
        outcomes += _payload_cases()
        outcomes += _generate_cases(root)
        outcomes += _pairs_cases(root)
        outcomes.append(_concurrent_writer_case(root))
        outcomes.append(_publish_link_case(root))
    if verbose:
        for o in outcomes:
            print(f"{'handled' if o.handled else 'FAILED ':8} {o.name}: {o.detail}")
        failed = sum(not o.handled for o in outcomes)
        print(f"cases tried {len(outcomes)} / handled {len(outcomes) - failed} / failed {failed}")
    return outcomes


if __name__ == "__main__":
    sys.exit(1 if any(not o.handled for o in run_suite()) else 0)
