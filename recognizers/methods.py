"""Recognition methods: what the trainer trains, by name.

A method maps images (B, 3, H, W) in [-1, 1] to embeddings and may add its own losses: ``forward``
returns ``(embeddings, aux_losses)`` where ``aux_losses`` is a dict of scalar tensors that the
trainer adds to the margin loss and logs term by term. The default ``plain`` method is a backbone on
RGB; the privacy-preserving variants (DCTDP, DuetFace, PartialFace, MinusFace) live in
``facesynth.privacy`` and register themselves here when that package is imported (the
``train-recognizer`` command imports it), so one trainer serves them all.

A method owns ``self.backbone`` (built through :mod:`facesynth.recognizers.backbones`); that
backbone is what gets saved as ``backbone.safetensors``. The whole method (frontends and all) is saved
as ``method.safetensors`` + ``method_config.json`` and rebuilt by :func:`load_method`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.optim_groups import OptimizerGroup
from facesynth.recognizers.backbones import (
    _jsonable,
    build_backbone,
    load_state_dict_strict,
    read_state_dict,
    save_backbone,
)

METHOD_WEIGHTS = "method.safetensors"
METHOD_CONFIG = "method_config.json"

_METHODS: dict[str, type[RecognitionMethod]] = {}


class RecognitionMethod(nn.Module):
    """Base class: a backbone plus whatever a method puts in front of or beside it.

    Subclasses call ``super().__init__(backbone, backbone_kwargs)`` and override :meth:`forward`
    (and :meth:`embed` when inference differs from training). Extra constructor keyword options must
    be JSON-serialisable; :meth:`method_kwargs` returns them for the saved config.
    """

    name: str = ""

    def __init__(self, backbone: str = "r50", backbone_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        self.backbone = build_backbone(backbone, **dict(backbone_kwargs or {}))
        self._backbone_spec = {
            "backbone": backbone,
            "backbone_kwargs": _jsonable(dict(backbone_kwargs or {})),
        }
        self._method_kwargs: dict[str, Any] = {}

    @property
    def embedding_size(self) -> int:
        """Width of the embeddings (the backbone's ``features`` BatchNorm1d, or its config)."""
        features = getattr(self.backbone, "features", None)
        if isinstance(features, nn.BatchNorm1d):
            return int(features.num_features)
        raise NotImplementedError(f"{type(self).__name__} must define embedding_size")

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the backbone expects; the trainer resizes shard images to it."""
        config = getattr(self.backbone, "config", None)
        size = getattr(config, "input_size", None) if config is not None else None
        return (int(size[0]), int(size[1])) if size is not None else (112, 112)

    def method_kwargs(self) -> dict[str, Any]:
        return dict(self._method_kwargs)

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """Parts of the method trained with their own optimizer settings (none by default).

        Each :class:`~facesynth.core.optim_groups.OptimizerGroup` names a parameter-name prefix (longest
        prefix wins) and the settings that differ from the trainer's: optimizer type, lr or lr scale,
        weight decay, schedule. Everything else uses the trainer's settings.
        """
        return []

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings for evaluation (the model should be in eval mode)."""
        return self(images)[0]


def register_method(name: str) -> Callable[[type[RecognitionMethod]], type[RecognitionMethod]]:
    """Class decorator: make a :class:`RecognitionMethod` trainable by ``name`` (``--privacy NAME``)."""

    def decorator(cls: type[RecognitionMethod]) -> type[RecognitionMethod]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(
                f"recognition method {name!r} is already registered by {_METHODS[name].__qualname__}"
            )
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorator


def available_methods() -> list[str]:
    return sorted(_METHODS)


def build_method(
    name: str, backbone: str, backbone_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
) -> RecognitionMethod:
    """Build a registered method around a registered backbone."""
    if name not in _METHODS:
        raise ConfigError(
            f"unknown recognition method {name!r}; available: {', '.join(available_methods())} "
            "(privacy methods register when facesynth.privacy is imported)"
        )
    try:
        method = _METHODS[name](backbone=backbone, backbone_kwargs=backbone_kwargs, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"recognition method {name!r}: bad options {sorted(kwargs)} ({exc})") from None
    method._method_kwargs = _jsonable(dict(kwargs))
    return method


@register_method("plain")
class PlainMethod(RecognitionMethod):
    """The backbone on RGB images, no extra losses: ordinary face recognition."""

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.backbone(images), {}


def save_method(
    method: RecognitionMethod, folder: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``method.safetensors`` + ``method_config.json`` and the backbone files into ``folder``."""
    from safetensors.torch import save_file

    from facesynth.core.atomic_io import commit_temp_file, temp_path_for, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_backbone(method.backbone, folder, metadata)
    state = {k: v.detach().to("cpu").contiguous() for k, v in method.state_dict().items()}
    weights = folder / METHOD_WEIGHTS
    tmp = temp_path_for(weights)
    try:
        save_file(state, str(tmp), metadata={"format": "pt", "method": method.name})
        commit_temp_file(tmp, weights)
    finally:
        if tmp.exists():
            tmp.unlink()
    config = {"method": method.name, **method._backbone_spec, "method_kwargs": method.method_kwargs()}
    for key, value in (metadata or {}).items():
        config[key if key.startswith("_") else f"_{key}"] = _jsonable(value)
    write_json_atomic(folder / METHOD_CONFIG, config)
    return folder


def load_method(folder: str | os.PathLike, device: str | torch.device = "cpu") -> RecognitionMethod:
    """Rebuild a saved method (eval mode); privacy methods need ``facesynth.privacy`` imported first."""
    folder = Path(folder)
    config_path = folder / METHOD_CONFIG
    if not config_path.is_file():
        raise FacesynthError(f"{folder}: no {METHOD_CONFIG} (not a trained recognizer folder)")
    config = _read_config_any(config_path)
    method = build_method(
        config["method"], config["backbone"], config.get("backbone_kwargs"), **config.get("method_kwargs", {})
    )
    load_state_dict_strict(method, read_state_dict(folder / METHOD_WEIGHTS), str(folder / METHOD_WEIGHTS))
    return method.to(device).eval()


def _read_config_any(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FacesynthError(f"{path}: cannot read method config ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("method"), str) or "backbone" not in data:
        raise FacesynthError(f"{path}: expected a JSON object with 'method' and 'backbone'")
    return {k: v for k, v in data.items() if not k.startswith("_")}
