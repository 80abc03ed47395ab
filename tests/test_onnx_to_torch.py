"""ONNX recognizers converted to differentiable torch modules (``onnx-torch:FILE``)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facesynth.core.errors import FacesynthError
from facesynth.recognizers.backbones import build_backbone
from facesynth.recognizers.encoders import load_encoder
from facesynth.recognizers.onnx_export import export_onnx
from facesynth.recognizers.onnx_to_torch import conversion_difference, convert_onnx, load_onnx_as_torch


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The project's tiny IResNet with non-trivial BatchNorm statistics, exported by its own exporter."""
    torch.manual_seed(0)
    model = build_backbone("tiny").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return model, path


def faces(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_exported_iresnet_converts_back_to_the_same_embeddings(exported):
    model, path = exported
    module = load_onnx_as_torch(path)
    x = faces(4)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(module(x), dim=1)
        reference = torch.nn.functional.normalize(model(x), dim=1)
    diff = float((ours - reference).abs().max())
    print(f"onnx-torch vs torch IResNet: max abs diff of unit embeddings {diff:.2e}")
    assert diff < 1e-5
    assert module.conversion_max_abs_diff < 1e-5
    assert conversion_difference(module, path, x) < 1e-5
    # the converter really ran the graph: BatchNorms folded into convolutions leave fewer weights
    assert sum(p.numel() for p in module.parameters()) < sum(p.numel() for p in model.parameters())


def test_gradient_matches_the_torch_model_and_raises_the_cosine(exported):
    model, path = exported
    encoder = load_encoder(f"onnx-torch:{path}", device="cpu")
    assert encoder.differentiable and encoder.embedding_dim == 128 and encoder.input_size == (112, 112)
    target = torch.nn.functional.normalize(
        torch.randn(2, 128, generator=torch.Generator().manual_seed(3)), dim=1
    )

    def grad_of(embed) -> tuple[torch.Tensor, torch.Tensor]:
        x = faces(2, seed=5).requires_grad_(True)
        cos = (torch.nn.functional.normalize(embed(x), dim=1) * target).sum()
        cos.backward()
        return x.grad, cos.detach()

    ours, cos0 = grad_of(encoder.embed)
    reference, _ = grad_of(model)
    assert torch.isfinite(ours).all() and ours.abs().max() > 0
    assert torch.allclose(ours, reference, atol=1e-5 * float(reference.abs().max()), rtol=1e-3)
    # one ascent step on the input moves the embedding towards the target
    x = faces(2, seed=5) + 0.5 * ours / ours.norm()
    with torch.no_grad():
        cos1 = (encoder.embed(x) * target).sum()
    assert cos1 > cos0
    assert not any(p.requires_grad for p in encoder.model.parameters())  # frozen weights


def test_arcface_torch_style_export_with_a_fixed_batch(tmp_path):
    """arcface_torch's torch2onnx.py uses the TorchScript exporter at opset 11 (Identity, Flatten
    nodes); a batch-1 export must still embed batches of any size."""
    torch.manual_seed(1)
    model = build_backbone("tiny").eval()
    path = tmp_path / "legacy.onnx"
    torch.onnx.export(
        model,
        torch.randn(1, 3, 112, 112),
        str(path),
        input_names=["data"],
        output_names=["fc1"],
        opset_version=11,
        do_constant_folding=True,
        dynamo=False,
    )
    module = load_onnx_as_torch(path)
    x = faces(3, seed=2)
    with torch.no_grad():
        diff = torch.nn.functional.normalize(module(x), dim=1) - torch.nn.functional.normalize(
            model(x), dim=1
        )
    assert float(diff.abs().max()) < 1e-5


def _graph_file(tmp_path, nodes, initializers, name="model.onnx"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(value, key) for key, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_unsupported_operator_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(0)
    path = _graph_file(
        tmp_path,
        [
            helper.make_node(
                "Conv", ["data", "w"], ["c"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
            ),
            helper.make_node("Erf", ["c"], ["e"], name="odd_activation"),
            helper.make_node("GlobalAveragePool", ["e"], ["p"]),
            helper.make_node("Flatten", ["p"], ["out"]),
        ],
        {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)},
    )
    with pytest.raises(FacesynthError, match=r"Erf \(node 'odd_activation'\)") as info:
        convert_onnx(path)
    assert "onnx2torch" in str(info.value)
    with pytest.raises(FacesynthError, match="Erf"):
        load_encoder(f"onnx-torch:{path}", device="cpu")


def test_raw_pixel_graph_gets_faces_in_minus_one_one(tmp_path):
    """An MXNet-style graph that subtracts and scales 0..255 pixels itself (insightface's rule)."""
    rng = np.random.default_rng(1)
    path = _graph_file(
        tmp_path,
        [
            helper.make_node("Sub", ["data", "mean"], ["s"], name="_minus0"),
            helper.make_node("Mul", ["s", "scale"], ["m"], name="_mul0"),
            helper.make_node(
                "Conv", ["m", "w", "b"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]
            ),
            helper.make_node("PRelu", ["c", "slope"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["q"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["q"], ["f"]),
            helper.make_node("Gemm", ["f", "fc", "fcb"], ["out"], transB=1),
        ],
        {
            "mean": np.float32(127.5).reshape(1),
            "scale": np.float32(0.0078125).reshape(1),
            "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32),
            "slope": np.full((4, 1, 1), 0.25, np.float32),
            "fc": rng.standard_normal((4, 16)).astype(np.float32),
            "fcb": rng.standard_normal(4).astype(np.float32),
        },
    )
    module = load_onnx_as_torch(path)
    assert module.raw_pixels
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    assert conversion_difference(module, path, x) < 1e-5


@pytest.mark.skipif(importlib.util.find_spec("onnx2torch") is not None, reason="onnx2torch is installed")
def test_onnx2torch_spec_without_the_package_says_how_to_install(exported):
    with pytest.raises(FacesynthError, match=r"pip install 'facesynth\[onnx2torch\]'"):
        load_encoder(f"onnx2torch:{exported[1]}", device="cpu")
