"""ONNX face recognizers as differentiable torch modules (the ``onnx-torch:FILE`` encoder spec).

insightface's recognition models (``w600k_r50.onnx`` in buffalo_l, ``glintr100.onnx`` in antelopev2,
Arc2Face's ``arcface.onnx``) ship as ONNX only, and onnxruntime gives no gradients, so ID3's loss and
guidance cannot use them. Exporters fold every BatchNorm that follows a convolution into that
convolution and name tensors freely, so the graph cannot be mapped back onto :class:`IResNet` key by
key. Instead :class:`OnnxGraphModule` runs the graph itself, node by node, with torch operators: the
weights become (frozen) parameters, so ``.to(device)``, ``.half()`` and autograd work as for any module.

Only the operators of convolutional recognizers are implemented (:data:`SUPPORTED_OPS`: IResNet,
MobileFaceNet and MXNet-era ResNets use nothing else); any other operator is refused at load time
with its name and node, never at the first forward. For other graphs, the optional ``onnx2torch``
package (``pip install 'facesynth[onnx2torch]'``, spec ``onnx2torch:FILE``) covers far more operators.

With ``verify=True`` (the default of :func:`load_onnx_as_torch`) the converted module and onnxruntime
embed the same random batch and a max abs difference of the L2-normalised embeddings above ``atol``
raises: a conversion is never silently wrong.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facesynth.core.errors import FacesynthError

logger = logging.getLogger(__name__)

Handler = Callable[[list[Any], dict[str, Any]], Any]


def _ints(values: Any) -> list[int]:
    """A shape/axes operand (tensor, list or None) as a list of Python ints."""
    if values is None:
        return []
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    return [int(v) for v in values]


def _symmetric_padding(pads: Sequence[int], spatial: int) -> tuple[list[int], list[int] | None]:
    """ONNX pads (begin..., end...) -> (torch padding, None) or (zeros, explicit F.pad list)."""
    pads = list(pads) or [0] * (2 * spatial)
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return begin, None
    explicit: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):  # F.pad wants the last dim first
        explicit += [b, e]
    return [0] * spatial, explicit


def _conv(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, weight, bias = args[0], args[1], args[2] if len(args) > 2 else None
    spatial = weight.ndim - 2
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise FacesynthError(f"Conv with auto_pad={attrs['auto_pad']!r} is not supported")
    padding, explicit = _symmetric_padding(attrs.get("pads", []), spatial)
    if explicit:
        x = F.pad(x, explicit)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return conv(
        x,
        weight,
        bias,
        stride=attrs.get("strides", [1] * spatial),
        padding=padding,
        dilation=attrs.get("dilations", [1] * spatial),
        groups=attrs.get("group", 1),
    )


def _batch_norm(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, scale, bias, mean, var = args[:5]
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


def _gemm(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    a, b = args[0], args[1]
    a = a.transpose(0, 1) if attrs.get("transA", 0) else a
    b = b.transpose(0, 1) if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + attrs.get("beta", 1.0) * args[2]
    return out


def _reshape(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, shape = args[0], _ints(args[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    fixed_batch = attrs.get("_fixed_batch")
    if fixed_batch is not None and shape and shape[0] == fixed_batch and x.shape[0] != fixed_batch:
        shape[0] = x.shape[0]  # graphs exported with a fixed batch hard-code it in their reshapes
    return x.reshape(shape)


def _flatten(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    axis = attrs.get("axis", 1) % max(x.ndim, 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _pool(kind: str) -> Handler:
    def run(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
        x = args[0]
        kernel = attrs["kernel_shape"]
        spatial = len(kernel)
        padding, explicit = _symmetric_padding(attrs.get("pads", []), spatial)
        if explicit:
            raise FacesynthError(f"{kind} with asymmetric pads {attrs.get('pads')} is not supported")
        stride = attrs.get("strides", [1] * spatial)
        ceil = bool(attrs.get("ceil_mode", 0))
        if spatial != 2:
            raise FacesynthError(f"{kind} over {spatial} spatial dimensions is not supported")
        if kind == "MaxPool":
            return F.max_pool2d(x, kernel, stride, padding, attrs.get("dilations", [1, 1]), ceil)
        return F.avg_pool2d(x, kernel, stride, padding, ceil, bool(attrs.get("count_include_pad", 0)))

    return run


def _axes(args: list[Any], attrs: dict[str, Any]) -> list[int] | None:
    """Axes from the attribute (old opsets) or the second input (opset >= 13/18)."""
    if "axes" in attrs:
        return list(attrs["axes"])
    if len(args) > 1 and args[1] is not None:
        return _ints(args[1])
    return None


def _unsqueeze(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x = args[0]
    out_rank = x.ndim + len(_axes(args, attrs) or [])
    for axis in sorted(a % out_rank for a in _axes(args, attrs) or []):
        x = x.unsqueeze(axis)
    return x


def _squeeze(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, axes = args[0], _axes(args, attrs)
    if axes is None:
        return x.squeeze()
    for axis in sorted((a % x.ndim for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _reduce_mean(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    axes = _axes(args, attrs)
    keep = bool(attrs.get("keepdims", 1))
    if axes is None:
        return args[0].mean() if not keep else args[0].mean(dim=tuple(range(args[0].ndim)), keepdim=True)
    return args[0].mean(dim=tuple(axes), keepdim=keep)


def _clip(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    low = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
    low = float(low) if low is not None else None
    high = float(high) if high is not None else None
    return args[0].clamp(low, high)


def _cast(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    from onnx import TensorProto

    x, to = args[0], attrs["to"]
    if to in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE):
        return x if x.is_floating_point() else x.float()  # keep the module's compute precision
    if to == TensorProto.INT64:
        return x.long()
    if to == TensorProto.INT32:
        return x.int()
    raise FacesynthError(f"Cast to ONNX type {to} is not supported")


def _shape(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    shape = list(args[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return torch.tensor(shape[start:end], dtype=torch.long)


def _gather(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    data, index = args[0], args[1]
    index = index.to(data.device) if isinstance(index, torch.Tensor) else torch.tensor(index)
    axis = attrs.get("axis", 0) % data.ndim
    picked = torch.index_select(data, axis, index.reshape(-1).long() % data.shape[axis])
    return picked.reshape(*data.shape[:axis], *index.shape, *data.shape[axis + 1 :])


def _prelu(args: list[Any], attrs: dict[str, Any]) -> torch.Tensor:
    x, slope = args
    return torch.where(x >= 0, x, x * slope)


#: ONNX operator -> torch implementation (numpy-style broadcasting, as ONNX specifies).
SUPPORTED_OPS: dict[str, Handler] = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "PRelu": _prelu,
    "Relu": lambda a, _: F.relu(a[0]),
    "LeakyRelu": lambda a, k: F.leaky_relu(a[0], k.get("alpha", 0.01)),
    "Sigmoid": lambda a, _: torch.sigmoid(a[0]),
    "Tanh": lambda a, _: torch.tanh(a[0]),
    "Clip": _clip,
    "Add": lambda a, _: a[0] + a[1],
    "Sub": lambda a, _: a[0] - a[1],
    "Mul": lambda a, _: a[0] * a[1],
    "Div": lambda a, _: a[0] / a[1],
    "Gemm": _gemm,
    "MatMul": lambda a, _: torch.matmul(a[0], a[1]),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda a, k: a[0].permute(*(k.get("perm") or reversed(range(a[0].ndim)))),
    "Identity": lambda a, _: a[0],
    "Dropout": lambda a, _: a[0],
    "GlobalAveragePool": lambda a, _: a[0].mean(dim=tuple(range(2, a[0].ndim)), keepdim=True),
    "AveragePool": _pool("AveragePool"),
    "MaxPool": _pool("MaxPool"),
    "ReduceMean": _reduce_mean,
    "Concat": lambda a, k: torch.cat([t for t in a if t is not None], dim=k["axis"]),
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Cast": _cast,
}


def _tensor(proto: Any) -> torch.Tensor:
    from onnx import numpy_helper

    return torch.from_numpy(np.array(numpy_helper.to_array(proto)))


class OnnxGraphModule(nn.Module):
    """Runs a one-input, one-output ONNX graph with torch operators (differentiable, device-movable).

    Floating-point weights are frozen :class:`~torch.nn.Parameter` s (``requires_grad=False``; flip it to
    fine-tune); integer tensors (shapes, indices) are buffers. ``raw_pixels`` graphs (MXNet-era models
    that normalise 0..255 pixels themselves) get ``(x + 1) * 127.5`` in front, so the module always
    takes faces in [-1, 1] like every facesynth encoder.
    """

    def __init__(self, model: Any, source: str = "<onnx model>", raw_pixels: bool = False):
        super().__init__()
        from onnx import helper

        graph = model.graph
        self.source = source
        unsupported: dict[str, str] = {}
        for node in graph.node:
            known = node.domain in ("", "ai.onnx") and node.op_type in SUPPORTED_OPS
            if not known and node.op_type != "Constant":
                label = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                unsupported.setdefault(label, node.name or "<unnamed>")
        if unsupported:
            listed = ", ".join(f"{op} (node {name!r})" for op, name in sorted(unsupported.items()))
            raise FacesynthError(
                f"{source}: cannot convert ONNX operator(s) {listed} to torch; the built-in converter "
                f"handles {', '.join(sorted(SUPPORTED_OPS))}. For other graphs install onnx2torch "
                "(pip install 'facesynth[onnx2torch]') and use the spec onnx2torch:FILE"
            )
        weights = {init.name for init in graph.initializer}
        inputs = [i for i in graph.input if i.name not in weights]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise FacesynthError(
                f"{source}: a recognition model has 1 input and 1 output, this one "
                f"{len(inputs)} and {len(graph.output)}"
            )
        self.input_name, self.output_name = inputs[0].name, graph.output[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        self.input_shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        self.raw_pixels = raw_pixels

        self._slots: dict[str, str] = {}  # ONNX tensor name -> attribute name on this module
        self.weights = nn.ParameterDict()
        for index, init in enumerate(graph.initializer):
            self._store(init.name, _tensor(init), index)
        self._nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        fixed_batch = self.input_shape[0] if self.input_shape else None
        for index, node in enumerate(graph.node):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            for key, value in attrs.items():
                if isinstance(value, bytes):
                    attrs[key] = value.decode()
            if node.op_type == "Constant":
                if "value" not in attrs:
                    raise FacesynthError(f"{source}: Constant node {node.name!r} without a tensor value")
                self._store(node.output[0], _tensor(attrs["value"]), f"c{index}")
                continue
            if node.op_type == "Reshape":
                attrs["_fixed_batch"] = fixed_batch
            self._nodes.append((node.op_type, list(node.input), list(node.output), attrs))

    def _store(self, name: str, value: torch.Tensor, index: int | str) -> None:
        slot = f"t{index}_{re.sub(r'[^0-9A-Za-z_]', '_', name)[-40:]}"
        if value.is_floating_point():
            self.weights[slot] = nn.Parameter(value.float(), requires_grad=False)
        else:
            self.register_buffer(slot, value, persistent=True)
        self._slots[name] = slot

    def _value(self, name: str) -> torch.Tensor:
        slot = self._slots[name]
        return self.weights[slot] if slot in self.weights else getattr(self, slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.raw_pixels:
            x = (x + 1.0) * 127.5
        env: dict[str, Any] = {self.input_name: x}
        for op_type, inputs, outputs, attrs in self._nodes:
            args = [(env[name] if name in env else self._value(name)) if name else None for name in inputs]
            try:
                result = SUPPORTED_OPS[op_type](args, attrs)
            except FacesynthError as exc:
                raise FacesynthError(f"{self.source}: {exc}") from None
            env[outputs[0]] = result
        return env[self.output_name]


def convert_onnx(path: str | os.PathLike) -> OnnxGraphModule:
    """Load an ONNX file and convert it (no check against onnxruntime; see :func:`load_onnx_as_torch`)."""
    import onnx

    from facesynth.recognizers.encoders import _graph_normalises_input

    path = Path(path)
    if not path.is_file():
        raise FacesynthError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others
        raise FacesynthError(f"{path}: not a readable ONNX model ({exc})") from None
    return OnnxGraphModule(model, source=str(path), raw_pixels=_graph_normalises_input(path))


def conversion_difference(module: nn.Module, path: str | os.PathLike, images: torch.Tensor) -> float:
    """Max |torch - onnxruntime| over the L2-normalised embeddings of ``images`` (CPU, float32).

    ``images`` are faces in [-1, 1]; a raw-pixel graph is fed ``(x + 1) * 127.5`` as the module does.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    blob = images.float().cpu()
    if getattr(module, "raw_pixels", False):
        blob = (blob + 1.0) * 127.5
    expected = session.run(None, {session.get_inputs()[0].name: blob.numpy()})[0]
    with torch.no_grad():
        got = module.float().cpu()(images.float().cpu()).numpy()
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    return float(np.max(np.abs(expected - got)))


def load_onnx_as_torch(
    path: str | os.PathLike, *, verify: bool = True, atol: float = 1e-3, seed: int = 0
) -> OnnxGraphModule:
    """Convert an ONNX recognizer and (with ``verify``) check it against onnxruntime on a random batch.

    The difference found is kept as ``module.conversion_max_abs_diff`` (None without ``verify``).
    """
    module = convert_onnx(path).eval()
    module.conversion_max_abs_diff = None
    if verify:
        shape = module.input_shape
        if len(shape) != 4 or shape[1] != 3 or shape[2] is None or shape[3] is None:
            raise FacesynthError(f"{path}: input shape {shape} is not (B, 3, H, W) with a fixed H, W")
        batch = shape[0] or 2
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(batch, 3, shape[2], shape[3], generator=generator) * 2 - 1
        diff = conversion_difference(module, path, images)
        logger.info("onnx-torch %s: max abs difference to onnxruntime %.2e", path, diff)
        if not diff <= atol:
            raise FacesynthError(
                f"{path}: the torch conversion differs from onnxruntime by {diff:.2e} (> {atol:g}); "
                "try the onnx2torch:FILE spec"
            )
        module.conversion_max_abs_diff = diff
    return module


def load_onnx2torch(path: str | os.PathLike) -> nn.Module:
    """Convert with the optional ``onnx2torch`` package (many more operators; not checked here)."""
    try:
        from onnx2torch import convert
    except ImportError:
        raise FacesynthError(
            "the onnx2torch: encoder spec needs the optional onnx2torch package: "
            "pip install 'facesynth[onnx2torch]'"
        ) from None
    path = Path(path)
    if not path.is_file():
        raise FacesynthError(f"{path}: ONNX model not found")
    try:
        module = convert(str(path)).eval()
    except Exception as exc:  # onnx2torch raises NotImplementedError and others
        raise FacesynthError(f"{path}: onnx2torch cannot convert this model ({exc})") from None
    from facesynth.recognizers.encoders import _graph_normalises_input

    return _RawPixelInput(module) if _graph_normalises_input(path) else module


class _RawPixelInput(nn.Module):
    """Feeds a graph that normalises 0..255 pixels itself from faces in [-1, 1]."""

    raw_pixels = True

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x + 1.0) * 127.5)
