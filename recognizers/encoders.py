"""Identity encoders: one interface over torch checkpoints, ONNX models, insightface's zoo and dlib.

Every encoder maps aligned faces, a float tensor (B, 3, H, W) in [-1, 1] (RGB, arcface_torch's
``(pixel / 255 - 0.5) / 0.5``), to (B, D) embeddings, L2-normalised unless ``normalize=False`` asks
for the raw ones (the flip-TTA of the verification protocol sums raw embeddings). ``differentiable``
says whether gradients flow back to the input (ID3's identity loss and guidance need that: only
:class:`TorchEncoder` does, which is what ``onnx-torch:`` and ``onnx2torch:`` build).

Backends and specs for :func:`load_encoder`:

- ``torch:PATH``: a backbone folder / ``.safetensors`` / arcface_torch ``.pth`` (via
  :func:`facesynth.recognizers.backbones.load_backbone`), or any ``nn.Module`` passed to
  :class:`TorchEncoder` directly;
- ``onnx:PATH``: any single-output face-recognition ONNX model, run with onnxruntime;
- ``onnx-torch:PATH``: the same ONNX file converted to a differentiable torch module
  (:mod:`facesynth.recognizers.onnx_to_torch`, checked against onnxruntime at load), so ID3's loss and
  guidance can use insightface's ``w600k_r50.onnx`` / ``glintr100.onnx`` on GPU with gradients;
- ``onnx2torch:PATH``: the same through the optional ``onnx2torch`` package (more operators);
- ``insightface:PATH_OR_NAME``: through ``insightface.model_zoo.get_model`` (must route to ``ArcFaceONNX``);
- ``dlib``: dlib's ResNet face descriptor from the ``face-recognition-models`` package (CPU, offline).

ONNX sessions pick providers per process: CUDA on ``device_id = LOCAL_RANK`` (or the index in
``device="cuda:k"``) when onnxruntime has the CUDA provider, otherwise CPU.
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facesynth.core.errors import FacesynthError


def resize_faces(images: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Faces (B, 3, H, W) at ``size`` (H, W): bilinear and antialiased, as the trainer resizes them."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return nn.functional.interpolate(
        images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )


def resize_landmarks(
    points: torch.Tensor, image_size: tuple[int, int] | list[int], size: tuple[int, int] | list[int]
) -> torch.Tensor:
    """(..., K, 2) pixel (x, y) landmarks of an (H, W) image moved to the same image resized to ``size``.

    Pixel-centre convention, as :func:`resize_faces` samples: x' = (x + 0.5) * W'/W - 0.5. NaN stays NaN.
    """
    points = torch.as_tensor(points, dtype=torch.float32)
    if tuple(image_size) == tuple(size):
        return points
    scale = torch.tensor([size[1] / image_size[1], size[0] / image_size[0]], dtype=torch.float32)
    return (points + 0.5) * scale - 0.5


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise FacesynthError(f"expected images of shape (B, H, W, 3), got {array.shape}")
    return (
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5
        - 1.0
    )


def onnx_providers(device: str | torch.device | None = None) -> list[Any]:
    """onnxruntime providers for this process: CUDA on the local rank's GPU if possible, else CPU.

    ``device``: ``None``/``"auto"`` (CUDA when onnxruntime has it, GPU index from ``LOCAL_RANK``),
    ``"cpu"``, ``"cuda"`` or ``"cuda:k"``.
    """
    import onnxruntime as ort

    spec = "auto" if device is None else str(device)
    if spec == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if spec.startswith("cuda") and not has_cuda:
        raise FacesynthError(
            f"device {spec!r} asked for, but onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu: pip install 'facesynth[gpu]')"
        )
    if not has_cuda:
        return ["CPUExecutionProvider"]
    device_id = int(spec.split(":", 1)[1]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


class IdentityEncoder(ABC):
    """Aligned faces in [-1, 1] -> identity embeddings."""

    #: gradients flow from the embedding back to the input images
    differentiable: bool = False
    #: embedding width
    embedding_dim: int
    #: (height, width) of the aligned faces it expects; None when it resizes on its own
    input_size: tuple[int, int] | None = (112, 112)
    #: short text for reports and manifests
    description: str = ""

    @abstractmethod
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) embeddings of a checked batch."""

    def embed(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) float embeddings (L2-normalised by default).

        Faces larger than the encoder's input (a recognizer trained at a reduced size on 112x112
        crops) are resized down the way the trainer resizes them; smaller ones are refused.
        """
        images = self._fit(images)
        self._check(images)
        raw = self._forward(images)
        return torch.nn.functional.normalize(raw, dim=1) if normalize else raw

    __call__ = embed

    def embed_numpy(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB -> float32 (N, D) L2-normalised embeddings, batched, no gradients."""
        out = []
        for start in range(0, len(images), batch_size):
            with torch.inference_mode():
                emb = self.embed(images_to_tensor(images[start : start + batch_size]))
            out.append(emb.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(out)

    def _will_resize(self, images: torch.Tensor) -> bool:
        """Whether :meth:`embed` resizes these faces down to the encoder's input (larger faces only)."""
        size = self.input_size
        return not (
            size is None
            or not isinstance(images, torch.Tensor)
            or images.ndim != 4
            or tuple(images.shape[2:]) == tuple(size)
            or images.shape[2] < size[0]
            or images.shape[3] < size[1]
        )

    def _fit(self, images: torch.Tensor) -> torch.Tensor:
        return resize_faces(images, self.input_size) if self._will_resize(images) else images

    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
            raise FacesynthError(f"{self.description}: expected images (B, 3, H, W), got {shape}")
        if self.input_size is not None and tuple(images.shape[2:]) != tuple(self.input_size):
            raise FacesynthError(
                f"{self.description}: images are {images.shape[3]}x{images.shape[2]}, this encoder expects "
                f"aligned {self.input_size[1]}x{self.input_size[0]} faces"
            )


class TorchEncoder(IdentityEncoder):
    """A torch backbone (differentiable). Gradients flow unless the caller disables them."""

    differentiable = True

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int] | None = None,
        description: str = "",
        device: str | torch.device | None = None,
        set_eval: bool = True,
    ):
        """``set_eval=False`` leaves the module's train/eval mode alone (a trainer wrapping its live
        model; :func:`~facesynth.recognizers.verification.evaluate_benchmark` switches to eval and back)."""
        self.model = model.eval() if set_eval else model
        if device is not None:
            self.model.to(device)
        config = getattr(model, "config", None)
        size = input_size or getattr(config, "input_size", None) or (112, 112)
        self.input_size = (int(size[0]), int(size[1]))
        self.description = description or f"torch:{type(model).__name__}"
        was_training = self.model.training
        self.model.eval()  # the probe must not touch BatchNorm running statistics
        try:
            with torch.no_grad():
                probe = self._forward(torch.zeros(2, 3, *self.input_size))
        finally:
            self.model.train(was_training)
        if probe.ndim != 2:
            raise FacesynthError(
                f"{self.description}: model output has shape {tuple(probe.shape)}, expected (B, D)"
            )
        self.embedding_dim = int(probe.shape[1])

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    @classmethod
    def from_path(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", **kwargs: Any
    ) -> TorchEncoder:
        """Load a backbone folder, ``.safetensors`` or arcface_torch ``.pth`` (see ``load_backbone``)."""
        from facesynth.recognizers.backbones import load_backbone

        model = load_backbone(path, device=device, **kwargs)
        return cls(model, description=f"torch:{path}")

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device, dtype=next(self.model.parameters()).dtype))


def _graph_normalises_input(path: str | os.PathLike) -> bool:
    """insightface's ArcFaceONNX rule: a Sub and a Mul node among the first 8 graph nodes mean the
    graph itself normalises raw 0..255 pixels (MXNet-exported models); otherwise the model expects
    (pixel - 127.5) / 127.5, i.e. our [-1, 1] input unchanged."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    has_sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    has_mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    return has_sub and has_mul


def _onnx_input_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an ONNX model's (B, 3, H, W) input, read from the graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] is None or dims[3] is None:
        raise FacesynthError(f"{path}: input shape {dims} is not (B, 3, H, W) with a fixed H, W")
    return int(dims[2]), int(dims[3])


class OnnxEncoder(IdentityEncoder):
    """Any single-input, single-output face-recognition ONNX model, run with onnxruntime."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FacesynthError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FacesynthError(f"{path}: onnxruntime cannot load this model ({exc})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise FacesynthError(
                f"{path}: a recognition model has 1 input and 1 output, this one {len(inputs)} and {len(outputs)}"
            )
        shape = inputs[0].shape
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]) or shape[1] != 3:
            raise FacesynthError(f"{path}: input shape {shape} is not (B, 3, H, W)")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_size = (int(shape[2]), int(shape[3]))
        dim = outputs[0].shape[-1]
        self.raw_pixels = _graph_normalises_input(path)
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.description = f"onnx:{path}"
        self.embedding_dim = (
            int(dim)
            if isinstance(dim, int)
            else int(self._run(np.zeros((1, 3, *self.input_size), np.float32)).shape[1])
        )

    def _run(self, blob: np.ndarray) -> np.ndarray:
        if self.fixed_batch is not None and blob.shape[0] != self.fixed_batch:
            return np.concatenate([self._run(blob[i : i + 1]) for i in range(blob.shape[0])])
        return self.session.run([self.output_name], {self.input_name: blob})[0]

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float().cpu()
        if self.raw_pixels:
            x = (x + 1.0) * 127.5
        return torch.from_numpy(self._run(np.ascontiguousarray(x.numpy())).astype(np.float32))


class InsightFaceEncoder(IdentityEncoder):
    """A recognition model loaded with ``insightface.model_zoo.get_model`` (must be ``ArcFaceONNX``).

    insightface decides the input normalisation (see :func:`_graph_normalises_input`); we feed RGB
    pixels 0..255 to ``ArcFaceONNX.forward``, which applies it.
    """

    def __init__(
        self, name_or_path: str, device: str | torch.device | None = None, root: str = "~/.insightface"
    ):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        try:
            model = get_model(str(name_or_path), root=root, providers=onnx_providers(device))
        except AssertionError as exc:
            raise FacesynthError(f"insightface model {name_or_path!r}: {exc}") from None
        if model is None:
            raise FacesynthError(
                f"insightface found no model {name_or_path!r} (under {root}/models or as a path)"
            )
        if not isinstance(model, ArcFaceONNX):
            raise FacesynthError(
                f"{name_or_path}: insightface routes this model to {type(model).__name__}, not a recognition model"
            )
        self.model = model
        self.input_size = (int(model.input_size[1]), int(model.input_size[0]))
        self.description = f"insightface:{name_or_path}"
        dim = model.output_shape[-1]
        self.embedding_dim = (
            int(dim)
            if isinstance(dim, int)
            else int(self._forward(torch.zeros(1, 3, *self.input_size)).shape[1])
        )

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = ((images.detach().float().cpu() + 1.0) * 127.5).numpy()
        return torch.from_numpy(np.asarray(self.model.forward(pixels), dtype=np.float32))


def face_recognition_models_dir() -> Path:
    """The ``models/`` folder of the ``face-recognition-models`` package, found without importing it
    (its ``__init__`` imports ``pkg_resources``, which new setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FacesynthError(
            "the dlib backend needs the 'dlib' extra: pip install 'facesynth[dlib]' "
            "(dlib-bin + face-recognition-models)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not folder.is_dir():
        raise FacesynthError(f"{folder}: face-recognition-models is installed but has no models folder")
    return folder


def _import_dlib():
    try:
        import dlib
    except ImportError:
        raise FacesynthError(
            "the dlib backend needs the 'dlib' extra: pip install 'facesynth[dlib]'"
        ) from None
    return dlib


#: Where dlib's own 150x150 face chips (``dlib.get_face_chip(..., size=150, padding=0.25)``) put the
#: five ArcFace-order points: medians measured by running dlib's 68-point predictor on the chips of
#: 370 CelebA-wild photos (eye-contour means, nose tip 30, mouth corners 48/54), in chip pixels.
DLIB_CHIP_TEMPLATE = np.array(
    [[46.83, 45.83], [100.33, 46.17], [74.0, 77.0], [50.0, 102.0], [98.0, 102.0]], dtype=np.float64
)


class DlibEncoder(IdentityEncoder):
    """dlib's ResNet face descriptor (128-d, CPU, offline; not differentiable).

    dlib expects its own 150x150 chips, not ArcFace-template crops. Each aligned crop is therefore
    re-warped by the similarity that maps the ArcFace template onto :data:`DLIB_CHIP_TEMPLATE`
    (parts outside the crop stay black). Measured on 185 CelebA-wild pairs (dlib-aligned, 10-fold):
    native dlib chips 97.84 %, re-warped crops 97.81 %, plain resizing of the crop to 150x150 81.64 %.
    """

    input_size = None
    embedding_dim = 128
    CHIP_SIZE = 150

    def __init__(self, model_file: str | os.PathLike | None = None):
        dlib = _import_dlib()
        path = (
            Path(model_file)
            if model_file
            else face_recognition_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
        )
        if not path.is_file():
            raise FacesynthError(f"{path}: dlib face recognition model not found")
        self.model = dlib.face_recognition_model_v1(str(path))
        self.description = f"dlib:{path.name}"

    def _check(self, images: torch.Tensor) -> None:
        super()._check(images)
        if images.shape[2] != images.shape[3]:
            raise FacesynthError(
                f"{self.description}: expects square aligned crops, got {images.shape[3]}x{images.shape[2]}"
            )

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        import cv2

        from facesynth.recognizers.alignment import similarity_transform, template

        side = int(images.shape[2])
        matrix = similarity_transform(template(side), DLIB_CHIP_TEMPLATE)
        pixels = ((images.detach().float().cpu().permute(0, 2, 3, 1) + 1.0) * 127.5).round().clamp(0, 255)
        chips = [
            np.ascontiguousarray(
                cv2.warpAffine(p, matrix, (self.CHIP_SIZE, self.CHIP_SIZE), flags=cv2.INTER_LINEAR)
            )
            for p in pixels.numpy().astype(np.uint8)
        ]
        descriptors = self.model.compute_face_descriptor(chips)
        return torch.tensor(np.array([np.asarray(d) for d in descriptors]), dtype=torch.float32)


def _split_spec(spec: str) -> tuple[str, str]:
    """``KIND:TARGET`` -> (kind, target); a bare path is guessed from its form (``.onnx`` -> onnx, else torch)."""
    kind, sep, target = str(spec).partition(":")
    if not sep or (len(kind) == 1 and os.name == "nt"):
        kind, target = (
            ("dlib", "") if spec == "dlib" else (("onnx" if str(spec).endswith(".onnx") else "torch"), spec)
        )
    return kind, target


def resolve_encoder_spec(spec: str) -> str:
    """The spec with a local file or folder made absolute, so a saved pipeline or config that records it
    still finds the encoder when used from another working directory. Names (``insightface:buffalo_l``,
    ``dlib``) are kept as they are."""
    kind, target = _split_spec(spec)
    if target and Path(target).expanduser().exists():
        return f"{kind}:{Path(target).expanduser().resolve()}"
    return str(spec)


def load_encoder(spec: str, device: str | torch.device | None = None) -> IdentityEncoder:
    """Build an encoder from ``torch:PATH``, ``onnx:PATH``, ``onnx-torch:PATH``, ``onnx2torch:PATH``,
    ``insightface:PATH_OR_NAME`` or ``dlib``.

    A bare path is guessed from its form: ``.onnx`` -> onnx, anything else -> torch.
    """
    kind, target = _split_spec(spec)
    torch_device = device
    if device in (None, "auto"):
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch_device = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    if kind == "torch":
        return TorchEncoder.from_path(target, device=torch_device)
    if kind in ("onnx-torch", "onnx2torch"):
        from facesynth.recognizers.onnx_to_torch import load_onnx2torch, load_onnx_as_torch

        module = load_onnx_as_torch(target) if kind == "onnx-torch" else load_onnx2torch(target)
        size = _onnx_input_size(target)
        return TorchEncoder(module, input_size=size, description=f"{kind}:{target}", device=torch_device)
    if kind == "onnx":
        return OnnxEncoder(target, device=device)
    if kind == "insightface":
        return InsightFaceEncoder(target, device=device)
    if kind == "dlib":
        return DlibEncoder(target or None)
    raise FacesynthError(
        f"unknown encoder kind {kind!r} in {spec!r}; use torch:, onnx:, onnx-torch:, onnx2torch:, "
        "insightface: or dlib"
    )
