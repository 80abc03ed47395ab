"""Recognition methods: what the trainer trains, by name.

A method maps images (B, 3, H, W) in [-1, 1] to embeddings and may add its own losses: ``forward``
returns ``(embeddings, aux_losses)`` where ``aux_losses`` is a dict of scalar tensors that the
trainer adds to the margin loss and logs term by term. The default ``plain`` method is a backbone on
RGB; the privacy-preserving variants (DCTDP, DuetFace, PartialFace, MinusFace) live in
``facesynth.privacy`` and are found through the lazy map of :data:`METHODS` (their module is imported
on first lookup), so one registry and one trainer serve them all.

A method owns ``self.backbone`` (built through :mod:`facesynth.recognizers.backbones`); that
backbone is what gets saved as ``backbone.safetensors``. The whole method (frontends and all) is saved
as ``method.safetensors`` + ``method_config.json`` and rebuilt by :func:`load_method`. The config is
the method's diffusers config: every method is a ``ConfigMixin`` whose constructor arguments are
recorded by ``register_to_config`` when it is built (by :func:`build_method` or directly), so a round
trip restores every option. Folders written before that (``method_kwargs`` in the config) still load.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.optim_groups import OptimizerGroup
from facesynth.core.registry import Registry
from facesynth.recognizers.backbones import (
    _jsonable,
    build_backbone,
    load_state_dict_strict,
    read_state_dict,
    save_backbone,
)

METHOD_WEIGHTS = "method.safetensors"
METHOD_CONFIG = "method_config.json"

#: Recognition methods by name. Privacy methods are recognition methods: their modules are imported
#: on first lookup (the strings below import nothing until then, so the layers stay one-way).
METHODS: Registry[type[RecognitionMethod]] = Registry(
    "recognition method",
    {
        "dctdp": "facesynth.privacy.dctdp",
        "duetface": "facesynth.privacy.duetface",
        "partialface": "facesynth.privacy.partialface",
        "minusface": "facesynth.privacy.minusface",
    },
)


def _records_config(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``__init__`` so the outermost constructor call records its arguments (``register_to_config``).

    Only the most derived class's call records: a subclass calling ``super().__init__`` does not
    overwrite its own, fuller argument list with its parent's.
    """
    recording = register_to_config(init)

    @functools.wraps(init)
    def wrapper(self: RecognitionMethod, *args: Any, **kwargs: Any) -> None:
        if type(self).__init__ is wrapper:
            recording(self, *args, **kwargs)
        else:
            init(self, *args, **kwargs)

    wrapper._records_config = True  # type: ignore[attr-defined]
    return wrapper


class RecognitionMethod(nn.Module, ConfigMixin):
    """Base class: a backbone plus whatever a method puts in front of or beside it.

    Subclasses call ``super().__init__(backbone, backbone_kwargs)`` and override :meth:`forward`
    (and :meth:`embed` when inference differs from training). Constructor arguments must be
    JSON-serialisable: they are the saved config (``self.config``). Arguments that must not be saved
    (paths to load weights from at build time) go in the class's ``ignore_for_config``.
    """

    name: str = ""
    config_name = METHOD_CONFIG

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_config", False):
            cls.__init__ = _records_config(init)

    def __init__(self, backbone: str = "r50", backbone_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        self.backbone = build_backbone(backbone, **dict(backbone_kwargs or {}))

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
        """The method's own saved options: its config without the backbone and private keys."""
        skip = {"backbone", "backbone_kwargs", "method"}
        return {k: v for k, v in self.config.items() if k not in skip and not k.startswith("_")}

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


RecognitionMethod.__init__ = _records_config(RecognitionMethod.__init__)  # type: ignore[method-assign]


def register_method(name: str) -> Callable[[type[RecognitionMethod]], type[RecognitionMethod]]:
    """Class decorator: make a :class:`RecognitionMethod` trainable by ``name`` (``--privacy NAME``)."""

    def decorator(cls: type[RecognitionMethod]) -> type[RecognitionMethod]:
        if not (isinstance(cls, type) and issubclass(cls, RecognitionMethod)):
            raise TypeError(f"{cls!r} must derive from RecognitionMethod")
        METHODS.register(name)(cls)
        cls.name = name
        return cls

    return decorator


def available_methods() -> list[str]:
    """Every method name :func:`build_method` accepts (built-in privacy methods included, unimported)."""
    return METHODS.names()


def get_method_class(name: str) -> type[RecognitionMethod]:
    """The class registered as ``name`` (imports its built-in provider on first use)."""
    return METHODS.get(name)


def build_method(
    name: str, backbone: str, backbone_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
) -> RecognitionMethod:
    """Build a registered method around a registered backbone."""
    cls = get_method_class(name)
    try:
        return cls(backbone=backbone, backbone_kwargs=backbone_kwargs, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"recognition method {name!r}: bad options {sorted(kwargs)} ({exc})") from None


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
    config = {"method": method.name, **json.loads(method.to_json_string())}
    for key, value in (metadata or {}).items():
        config[key if key.startswith("_") else f"_{key}"] = _jsonable(value)
    write_json_atomic(folder / METHOD_CONFIG, config)
    return folder


def load_method(folder: str | os.PathLike, device: str | torch.device = "cpu") -> RecognitionMethod:
    """Rebuild a saved method (eval mode) from its config and weights."""
    folder = Path(folder)
    config_path = folder / METHOD_CONFIG
    if not config_path.is_file():
        raise FacesynthError(f"{folder}: no {METHOD_CONFIG} (not a trained recognizer folder)")
    name, options = read_method_config(config_path)
    cls = get_method_class(name)
    try:
        method = cls.from_config(options)
    except TypeError as exc:
        raise FacesynthError(f"{config_path}: options do not fit method {name!r} ({exc})") from None
    load_state_dict_strict(method, read_state_dict(folder / METHOD_WEIGHTS), str(folder / METHOD_WEIGHTS))
    return method.to(device).eval()


def read_method_config(path: Path) -> tuple[str, dict[str, Any]]:
    """(method name, constructor options) of a ``method_config.json``, current or pre-ConfigMixin.

    Older files kept the method's own options under ``method_kwargs``; they are flattened here.
    Keys starting with ``_`` are metadata and are dropped.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FacesynthError(f"{path}: cannot read method config ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("method"), str) or "backbone" not in data:
        raise FacesynthError(f"{path}: expected a JSON object with 'method' and 'backbone'")
    name = data.pop("method")
    legacy = data.pop("method_kwargs", None) if "_class_name" not in data else None
    options = {k: v for k, v in data.items() if not k.startswith("_")}
    if isinstance(legacy, dict):
        options.update(legacy)
    return name, options
