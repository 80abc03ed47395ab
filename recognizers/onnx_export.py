"""Export a trained backbone to ONNX that onnxruntime and insightface's model zoo load as is.

The graph takes ``data`` (B, 3, H, W) float32 RGB in [-1, 1] with a dynamic batch dimension and
returns the raw (unnormalised) embedding, like arcface_torch's ``torch2onnx.py``. Normalisation is
*not* baked in, so ``insightface.model_zoo.get_model`` routes the file to ``ArcFaceONNX`` with its
default mean = std = 127.5 (it only assumes a normalising graph when a Sub and a Mul node come
first) and its embeddings match the torch model's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facesynth.core.errors import FacesynthError

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
INPUT_NAME = "data"
OUTPUT_NAME = "embedding"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int] = (112, 112),
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` (eval mode, on CPU, float32) as a single-file ONNX graph with a dynamic batch.

    With ``check`` the file is run once with onnxruntime on a random batch of 3 and compared with
    torch; a max abs difference of the L2-normalised embeddings above ``atol`` raises (the export
    would give wrong embeddings). Normalised, because raw embedding norms vary by orders of magnitude
    (an untrained r18 gives norms ~1e8) while only the direction identifies a face.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model = model.eval()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    model_cpu = model.to("cpu").float()
    example = torch.randn(2, 3, *input_size)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(
                model_cpu,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
                optimize=True,
                verbose=False,
            )
        onnx.checker.check_model(str(tmp))
        if check:  # against the CPU float32 model: a GPU reference would add TF32/cuDNN differences
            diff = max_abs_difference(model_cpu, tmp, torch.rand(3, 3, *input_size) * 2 - 1)
            logger.info("ONNX export %s: max abs difference to torch %.2e", path, diff)
            if diff > atol:
                raise FacesynthError(f"{path}: exported model differs from torch by {diff:.2e} (> {atol:g})")
        os.replace(tmp, path)
    except FacesynthError:
        raise
    except Exception as exc:  # the exporter raises many types
        raise FacesynthError(f"ONNX export to {path} failed ({type(exc).__name__}: {exc})") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
        model.to(device, dtype)
        model.train(was_training)
    return path


def max_abs_difference(model: nn.Module, onnx_path: str | os.PathLike, images: torch.Tensor) -> float:
    """Largest |torch - onnxruntime| over the L2-normalised embeddings of ``images`` (CPU, float32)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        device = next(model.parameters()).device
        expected = model.eval()(images.to(device)).float().cpu().numpy()
    got = session.run(None, {session.get_inputs()[0].name: images.float().cpu().numpy()})[0]
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    return float(np.max(np.abs(expected - got)))
