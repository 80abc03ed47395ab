"""Identity encoders (torch, ONNX, insightface zoo, dlib) and ONNX export of a trained backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.backbones import build_backbone, save_backbone
from facesynth.recognizers.encoders import (
    InsightFaceEncoder,
    OnnxEncoder,
    TorchEncoder,
    load_encoder,
    onnx_providers,
)
from facesynth.recognizers.onnx_export import export_onnx


def _trained_like_backbone():
    """A tiny IResNet whose BN statistics are not the identity, as after training."""
    model = build_backbone("tiny")
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = _trained_like_backbone()
    save_backbone(model, folder / "run")
    path = export_onnx(model, folder / "model.onnx")
    return model, folder, path


def _aligned_batch(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def test_torch_encoder_from_run_folder_is_normalised_and_differentiable(exported):
    _, folder, _ = exported
    encoder = load_encoder(f"torch:{folder / 'run'}")
    assert isinstance(encoder, TorchEncoder) and encoder.differentiable
    assert encoder.embedding_dim == 128 and encoder.input_size == (112, 112)
    x = (torch.rand(3, 3, 112, 112) * 2 - 1).requires_grad_(True)
    emb = encoder.embed(x)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    emb[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_onnx_export_routes_to_arcface_and_matches_torch(exported):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model, _, path = exported
    zoo = get_model(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(zoo, ArcFaceONNX)
    assert (zoo.input_mean, zoo.input_std) == (127.5, 127.5)
    rgb = _aligned_batch(5)
    # insightface's own entry point: BGR uint8 crops, dynamic batch (5 here, 2 at export time)
    feats = zoo.get_feat([np.ascontiguousarray(im[:, :, ::-1]) for im in rgb])
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        expected = model(x).numpy()
    assert feats.shape == (5, 128)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    diff = float(np.abs(unit(feats) - unit(expected)).max())
    raw_rel = float(np.abs(feats - expected).max() / np.abs(expected).max())
    print(f"insightface ArcFaceONNX vs torch: embeddings max abs diff {diff:.2e}, raw relative {raw_rel:.2e}")
    assert diff < 1e-4
    assert raw_rel < 1e-5
    single = zoo.get_feat(np.ascontiguousarray(rgb[0, :, :, ::-1]))
    assert np.abs(unit(single[0]) - unit(expected[0])).max() < 1e-4


def test_onnx_and_insightface_encoders_agree_with_torch(exported):
    model, _, path = exported
    rgb = _aligned_batch(4, seed=1)
    torch_emb = TorchEncoder(model).embed_numpy(rgb)
    for encoder in (OnnxEncoder(path, device="cpu"), InsightFaceEncoder(str(path), device="cpu")):
        assert not encoder.differentiable and encoder.embedding_dim == 128
        assert np.abs(encoder.embed_numpy(rgb) - torch_emb).max() < 1e-4
    assert isinstance(load_encoder(str(path), device="cpu"), OnnxEncoder)


def test_onnx_providers_choice(monkeypatch):
    import onnxruntime as ort

    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        monkeypatch.setenv("LOCAL_RANK", "1")
        assert onnx_providers(None)[0] == ("CUDAExecutionProvider", {"device_id": 1})
        assert onnx_providers("cuda:3")[0] == ("CUDAExecutionProvider", {"device_id": 3})
    else:
        assert onnx_providers(None) == ["CPUExecutionProvider"]
        with pytest.raises(FacesynthError, match="no CUDAExecutionProvider"):
            onnx_providers("cuda:0")


def test_bad_inputs_give_clear_errors(exported, tmp_path):
    model, folder, path = exported
    encoder = TorchEncoder(model)
    with pytest.raises(FacesynthError, match="expects aligned 112x112"):
        encoder.embed(torch.zeros(1, 3, 96, 96))
    with pytest.raises(FacesynthError, match=r"expected images \(B, 3, H, W\)"):
        encoder.embed(torch.zeros(3, 112, 112))
    # mismatched checkpoint: the config says a wider net than the weights hold
    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "backbone.safetensors").write_bytes((folder / "run" / "backbone.safetensors").read_bytes())
    config = json.loads((folder / "run" / "backbone_config.json").read_text())
    (bad / "backbone_config.json").write_text(json.dumps({**config, "num_features": 64}))
    with pytest.raises(FacesynthError, match="checkpoint does not match the backbone"):
        load_encoder(f"torch:{bad}")
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"nope")
    with pytest.raises(FacesynthError, match="onnxruntime cannot load"):
        OnnxEncoder(not_onnx)
    with pytest.raises(FacesynthError, match="unknown encoder kind"):
        load_encoder("tensorflow:/x")
    with pytest.raises(FacesynthError, match="ONNX model not found"):
        load_encoder("onnx:/does/not/exist.onnx")


@pytest.mark.slow
def test_dlib_encoder_separates_identities(celeba_root):
    pytest.importorskip("dlib")
    from PIL import Image

    from facesynth.recognizers.alignment import DlibAligner
    from facesynth.recognizers.encoders import DlibEncoder

    aligner, encoder = DlibAligner(), load_encoder("dlib")
    assert isinstance(encoder, DlibEncoder) and encoder.embedding_dim == 128
    crops = []
    for person in sorted(p for p in celeba_root.iterdir() if p.is_dir())[:2]:
        for file in sorted(person.iterdir())[:3]:
            face = aligner.align_largest(np.asarray(Image.open(file).convert("RGB")))
            if face is not None:
                crops.append((person.name, face.image))
    names = [n for n, _ in crops]
    if len(set(names)) < 2 or max(names.count(n) for n in set(names)) < 2:
        pytest.skip("too few faces detected in the first CelebA identities")
    emb = encoder.embed_numpy(np.stack([c for _, c in crops]))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    same = np.array([[a == b for b in names] for a in names])
    off_diagonal = ~np.eye(len(names), dtype=bool)
    genuine, impostor = sims[same & off_diagonal].mean(), sims[~same].mean()
    print(f"dlib on CelebA crops: mean genuine cos {genuine:.3f}, impostor cos {impostor:.3f}")
    assert genuine > impostor + 0.05
