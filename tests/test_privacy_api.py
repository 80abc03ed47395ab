"""The client/server API: registry training path, protect/recognize round trips, payload validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import facesynth.privacy  # noqa: F401  (registers the methods)
from facesynth.core.errors import FacesynthError
from facesynth.core.shard_format import ShardRow, rows_to_table, shard_name, write_shard
from facesynth.privacy.api import (
    PrivacyMethod,
    available_privacy_methods,
    build_privacy_method,
    load_privacy_method,
)
from facesynth.privacy.payload import Payload, PayloadHeader
from facesynth.recognizers.methods import available_methods, save_method
from facesynth.tests.shard_fixtures import add_manifest

SMALL = {"input_size": [16, 16]}
METHODS = ("dctdp", "partialface")


def _images(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_methods_are_registered_with_the_recognizer_registry() -> None:
    for name in METHODS:
        assert name in available_methods() and name in available_privacy_methods()
    assert "plain" in available_methods() and "plain" not in available_privacy_methods()
    with pytest.raises(FacesynthError, match="unknown recognition method 'nope'; available: dctdp"):
        build_privacy_method("nope", "tiny")
    with pytest.raises(FacesynthError, match="unknown privacy method 'plain'"):
        build_privacy_method("plain", "tiny")
    with pytest.raises(FacesynthError, match="conflicts"):
        build_privacy_method("dctdp", "tiny", {"in_channels": 3})


@pytest.mark.parametrize("name", METHODS)
def test_protect_recognize_round_trip_and_save_load(name: str, tmp_path: Path) -> None:
    method = build_privacy_method(name, "tiny", SMALL).eval()
    assert isinstance(method, PrivacyMethod) and method.randomised
    x = _images(3)
    payload = method.protect(x, seed=11)
    assert payload.header.method == name and payload.header.shape == method.payload_shape()
    assert payload.nbytes == 3 * method.payload_channels * 16 * 16 * 4
    emb = method.recognize(payload)
    assert emb.shape == (3, method.embedding_size)
    # the server half is the backbone on exactly what left the client
    assert torch.allclose(emb, method.backbone(payload.tensor))
    # bytes on the wire and back (safetensors, no pickle)
    again = Payload.from_bytes(payload.to_bytes())
    assert again.header == payload.header and torch.equal(again.tensor, payload.tensor)
    # embed() goes through protect -> recognize with a reproducible per-query stream
    method.reset_eval_rng(3)
    first = method.embed(x)
    method.reset_eval_rng(3)
    assert torch.equal(first, method.embed(x))
    # a saved and reloaded server accepts the original client's payloads
    save_method(method, tmp_path / name)
    server = load_privacy_method(str(tmp_path / name))
    assert server.key_id() == method.key_id()
    assert torch.allclose(server.recognize(payload), emb, atol=1e-5)


def test_payload_mismatches_give_clear_errors() -> None:
    dctdp = build_privacy_method("dctdp", "tiny", SMALL).eval()
    partial = build_privacy_method("partialface", "tiny", SMALL).eval()
    other_seed = build_privacy_method("dctdp", "tiny", SMALL, key_seed=1).eval()
    other_eps = build_privacy_method("dctdp", "tiny", SMALL, epsilon_mean=2.0).eval()
    x = _images(2)
    payload = dctdp.protect(x, seed=0)
    with pytest.raises(FacesynthError, match="made by privacy method 'dctdp'.*runs 'partialface'"):
        partial.recognize(payload)
    for server in (other_seed, other_eps):
        with pytest.raises(FacesynthError, match="client key"):
            server.recognize(payload)
    with pytest.raises(FacesynthError, match="takes a Payload"):
        dctdp.recognize(payload.tensor)
    # a tensor that does not match its own header
    with pytest.raises(FacesynthError, match="does not match its header"):
        Payload(payload.tensor[:, :27], payload.header)
    # a header for another size
    bigger = PayloadHeader("dctdp", payload.header.key_id, 189, (189, 32, 32))
    with pytest.raises(FacesynthError, match="per-query shape"):
        dctdp.recognize(Payload(torch.zeros(1, 189, 32, 32), bigger))
    future = PayloadHeader("dctdp", payload.header.key_id, 189, (189, 16, 16), version=99)
    with pytest.raises(FacesynthError, match="version 99"):
        dctdp.recognize(Payload(payload.tensor, future))
    with pytest.raises(FacesynthError, match="extras"):
        Payload(payload.tensor, payload.header, {"mask": torch.zeros(2, 1, 4, 4)})
    with pytest.raises(FacesynthError, match="not a facesynth payload"):
        Payload.from_bytes(b"definitely not safetensors")
    # bad images on the client side
    with pytest.raises(FacesynthError, match=r"\(B, 3, 16, 16\)"):
        dctdp.protect(_images(1, size=20))
    with pytest.raises(FacesynthError, match=r"\(B, 3, 16, 16\)"):
        dctdp.protect(torch.zeros(1, 1, 16, 16))


def _shards(folder: Path, num_ids: int = 4, per_id: int = 4) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for label in range(num_ids):
        base = rng.integers(0, 256, size=(16, 16, 3))
        for i in range(per_id):
            noisy = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
            rows.append(ShardRow(image=noisy, label=label, identity=f"id{label}", index=i))
    write_shard(folder / shard_name(0, 1), rows_to_table(rows, None), row_group_size=8)
    add_manifest(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_trainer_trains_privacy_methods_through_the_registry(name: str, tmp_path: Path) -> None:
    from facesynth.recognizers.trainer import RecognizerTrainConfig, train_recognizer

    data = _shards(tmp_path / "data")
    config = RecognizerTrainConfig(
        data=[str(data)],
        output_dir=str(tmp_path / "run"),
        backbone="tiny",
        input_size=16,
        method=name,
        batch_size=8,
        max_steps=2,
        num_workers=0,
        progress=False,
        tensorboard=False,
        checkpoint_every=0,
    )
    result = train_recognizer(config)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    server = load_privacy_method(str(tmp_path / "run"))
    assert server.name == name
    payload = server.protect(_images(2), seed=0)
    assert server.recognize(payload).shape == (2, server.embedding_size)


@pytest.mark.slow
def test_bench_privacy_command_reports_mean_and_std_over_seeds(tmp_path: Path, capsys) -> None:
    import json

    from facesynth.pipelines.cli import main
    from facesynth.recognizers.benchmark_files import write_bin

    rng = np.random.default_rng(1)
    faces = [rng.integers(0, 256, size=(112, 112, 3)).astype(np.uint8) for _ in range(4)]
    images, issame = [], []
    for i in range(10):  # the 10-fold protocol needs at least 10 pairs
        a = faces[i % 4]
        same = i % 2 == 0
        b = faces[i % 4] if same else faces[(i + 1) % 4]
        images += [a, np.clip(b.astype(int) + rng.integers(-10, 11, size=b.shape), 0, 255).astype(np.uint8)]
        issame.append(same)
    bin_path = write_bin(tmp_path / "tiny.bin", images, issame, image_format="PNG")
    method = build_privacy_method("partialface", "tiny")  # benchmark files hold 112 x 112 faces
    save_method(method, tmp_path / "run")
    out = tmp_path / "bench"
    argv = ["bench", "--privacy", "partialface", "--model", f"torch:{tmp_path / 'run'}", str(bin_path)]
    assert main([*argv, "--out", str(out), "--batch-size", "20", "--no-flip", "--device", "cpu"]) == 0
    report = json.loads((out / "bench_privacy.json").read_text())
    assert report["method"] == "partialface" and report["seeds"] == [0, 1, 2]
    assert set(report["runs"]) == {"0", "1", "2"}
    row = report["summary"][0]
    accs = [report["runs"][s][0]["accuracy"] for s in ("0", "1", "2")]
    assert row["accuracy"]["mean"] == pytest.approx(float(np.mean(accs)))
    assert row["accuracy"]["std"] == pytest.approx(float(np.std(accs, ddof=1)))
    assert report["payload_bytes_per_query"] == 27 * 112 * 112 * 4
    assert "+-" in (out / "bench_privacy.md").read_text()
    capsys.readouterr()
    assert main([*argv, "--out", str(out), "--seeds", "0", "--device", "cpu"]) == 2
    assert "at least 3 seeds" in capsys.readouterr().err
    assert main([*argv[:2], "dctdp", *argv[3:], "--out", str(out), "--device", "cpu"]) == 2
    assert "not 'dctdp'" in capsys.readouterr().err


# ---- issue 13.10: the server checks what it is sent


def _tampered(payload: Payload, tensor=None, extras=None) -> Payload:
    """A payload object whose tensors were swapped after construction (as a hostile client would send)."""
    bad = Payload(payload.tensor.clone(), payload.header, dict(payload.extras))
    if tensor is not None:
        object.__setattr__(bad, "tensor", tensor)
    if extras is not None:
        object.__setattr__(bad, "extras", extras)
    return bad


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.clone().fill_(float("nan")), "NaN or infinite"),
        (lambda t: t.clone().fill_(float("inf")), "NaN or infinite"),
        (lambda t: t.clone().fill_(1e38), "beyond the method's bound"),
        (lambda t: t.double(), "dtype float64"),
        (lambda t: t.half(), "dtype float16"),
        (lambda t: t.to(torch.int8), "dtype int8"),
        (lambda t: t > 0, "dtype bool"),
    ],
)
def test_recognize_refuses_hostile_values(change, message) -> None:
    method = build_privacy_method("dctdp", "tiny", SMALL).eval()
    payload = method.protect(_images(2), seed=0)
    assert torch.isfinite(method.recognize(payload)).all()
    with pytest.raises(FacesynthError, match=message):
        method.recognize(Payload(change(payload.tensor), payload.header))
    with pytest.raises(FacesynthError, match=message):  # also when swapped in after validation
        method.recognize(_tampered(payload, tensor=change(payload.tensor)))


def test_bad_extras_are_refused() -> None:
    method = build_privacy_method("dctdp", "tiny", SMALL).eval()
    payload = method.protect(_images(2), seed=0)
    with pytest.raises(FacesynthError, match="extras must map names to tensors"):
        method.recognize(_tampered(payload, extras=[]))
    blob = payload.to_bytes()
    import json as _json

    n = int.from_bytes(blob[:8], "little")
    header = _json.loads(blob[8 : 8 + n])
    meta = _json.loads(header["__metadata__"]["facesynth_payload"])
    meta["extras"] = []
    header["__metadata__"]["facesynth_payload"] = _json.dumps(meta)
    text = _json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with pytest.raises(FacesynthError, match="payload header is not valid"):
        Payload.from_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])
