"""Backbone registry (timm-style: register by name, build by name) and backbone weight files.

Names: ``r18 r34 r50 r100 r200`` (arcface_torch IResNets, state-dict compatible with its
``backbone.pth`` files), ``tiny`` (a narrow one-block-per-stage IResNet for tests and CPU runs) and
``iresnet`` (every IResNet argument explicit). Add more with ``@register_backbone("name")`` on a
factory returning an ``nn.Module`` that maps images (B, C, H, W) in [-1, 1] to (B, D) embeddings.

A trained backbone is stored as two files in a folder (what ``facesynth train-recognizer`` writes and
what the identity encoders load):

- ``backbone.safetensors``: the state dict;
- ``backbone_config.json``: ``{"backbone": name, <build kwargs>...}`` (keys starting with ``_`` are
  metadata and ignored by the loader).

:func:`load_backbone` reads that folder, a ``save_pretrained`` folder, a lone ``.safetensors`` file,
or an official arcface_torch ``.pth`` (loaded with ``weights_only=True``; the architecture is read
off the key names and shapes when no name is given).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.core.registry import Registry
from facesynth.recognizers.iresnet import OFFICIAL_WIDTHS, IResNet

BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_CONFIG = "backbone_config.json"

BackboneFactory = Callable[..., nn.Module]
#: Backbone factories by name; the built-ins below register when this module is imported.
BACKBONES: Registry[BackboneFactory] = Registry("backbone")

#: Blocks per stage of the official IResNets (arcface_torch iresnet18 ... iresnet200).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
TINY_KWARGS: dict[str, Any] = {
    "layers": (1, 1, 1, 1),
    "widths": (16, 32, 64, 128),
    "stem_width": 16,
    "num_features": 128,
}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: make a backbone factory buildable by ``name``."""
    return BACKBONES.register(name)


def available_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return BACKBONES.names()


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone; ``kwargs`` go to its factory (e.g. ``input_size=(64, 64)``).

    The returned module carries ``backbone_name`` and ``backbone_kwargs`` so that
    :func:`save_backbone` knows its registry name (and, for modules without a diffusers config, the
    options that rebuild it).
    """
    factory = BACKBONES.get(name)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"backbone {name!r}: bad options {sorted(kwargs)} ({exc})") from None
    model.backbone_name = name
    model.backbone_kwargs = _jsonable(kwargs)
    return model


def _make_iresnet(layers: tuple[int, ...]) -> BackboneFactory:
    def factory(**kwargs: Any) -> IResNet:
        return IResNet(**{"layers": layers, **kwargs})

    return factory


for _name, _layers in IRESNET_LAYERS.items():
    register_backbone(_name)(_make_iresnet(_layers))


@register_backbone("tiny")
def tiny_iresnet(**kwargs: Any) -> IResNet:
    """One block per stage, widths 16/32/64/128, 128-d embedding: for tests and CPU experiments."""
    return IResNet(**{**TINY_KWARGS, **kwargs})


@register_backbone("iresnet")
def custom_iresnet(**kwargs: Any) -> IResNet:
    """An IResNet with every argument explicit (used when reading an unknown checkpoint's layout)."""
    return IResNet(**kwargs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# weight files


def save_backbone(
    model: nn.Module, folder: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``backbone.safetensors`` + ``backbone_config.json`` into ``folder``, atomically each.

    The config is the model's own diffusers config (``ConfigMixin``, e.g. :class:`IResNet`: every
    constructor option) under its registry name; a module without one must come from
    :func:`build_backbone`, whose recorded options are written instead.
    """
    from diffusers import ConfigMixin
    from safetensors.torch import save_file

    from facesynth.core.atomic_io import commit_temp_file, temp_path_for, write_json_atomic

    name = getattr(model, "backbone_name", None)
    if isinstance(model, ConfigMixin):
        options = json.loads(model.to_json_string())
        name = name or ("iresnet" if isinstance(model, IResNet) else type(model).__name__)
    elif name is not None:
        options = dict(getattr(model, "backbone_kwargs", {}))
    else:
        raise FacesynthError(
            "save_backbone needs a diffusers ConfigMixin model or one built with build_backbone"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = folder / BACKBONE_WEIGHTS
    tmp = temp_path_for(weights)
    try:
        save_file(state, str(tmp), metadata={"format": "pt", "backbone": name})
        commit_temp_file(tmp, weights)
    finally:
        if tmp.exists():
            tmp.unlink()
    config = {"backbone": name, **options}
    for key, value in (metadata or {}).items():
        config[key if key.startswith("_") else f"_{key}"] = _jsonable(value)
    write_json_atomic(folder / BACKBONE_CONFIG, config)
    return folder


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``) file, never unpickling code.

    A torch file holding ``{"state_dict": ...}`` or keys prefixed ``module.`` (DDP) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FacesynthError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise FacesynthError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign/corrupt files
        raise FacesynthError(
            f"{path}: not a loadable torch weight file ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise FacesynthError(f"{path}: expected a state dict of tensors")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return dict(data)


def iresnet_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Read an IResNet's (name, build kwargs) off its key names and shapes.

    Official layouts come back by their registry name (``r50`` ...) with no kwargs; others as
    ``iresnet`` with explicit ``layers``/``widths``/``stem_width``/``num_features``/``input_size``.
    """
    required = ("conv1.weight", "fc.weight", "features.running_mean")
    missing = [k for k in required if k not in state]
    if missing:
        raise FacesynthError(f"not an IResNet state dict (missing {missing})")
    layers, widths = [], []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not indices:
            raise FacesynthError(f"not an IResNet state dict (no layer{stage} blocks)")
        layers.append(max(indices) + 1)
        widths.append(int(state[f"layer{stage}.0.conv1.weight"].shape[0]))
    stem_width = int(state["conv1.weight"].shape[0])
    in_channels = int(state["conv1.weight"].shape[1])
    num_features, in_features = (int(s) for s in state["fc.weight"].shape)
    cells = in_features // widths[-1]
    side = int(round(cells**0.5))
    if side * side * widths[-1] != in_features:
        raise FacesynthError(
            f"fc.weight has {in_features} in-features, not {widths[-1]} x a square map; pass input_size explicitly"
        )
    kwargs: dict[str, Any] = {}
    if side != 7:
        kwargs["input_size"] = [side * 16, side * 16]
    if num_features != 512:
        kwargs["num_features"] = num_features
    if in_channels != 3:
        kwargs["in_channels"] = in_channels
    if tuple(widths) == OFFICIAL_WIDTHS and stem_width == 64:
        for name, official in IRESNET_LAYERS.items():
            if tuple(layers) == official:
                return name, kwargs
    kwargs.update(layers=layers, widths=widths, stem_width=stem_width)
    return "iresnet", kwargs


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what does not match and where from."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise FacesynthError(f"{source}: checkpoint does not match the backbone: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_backbone(
    path: str | os.PathLike, name: str | None = None, device: str | torch.device = "cpu", **kwargs: Any
) -> nn.Module:
    """Load a backbone for inference (eval mode) from a run folder or a weight file.

    ``path`` may be: a folder with ``backbone_config.json`` + ``backbone.safetensors`` (or a run folder
    whose ``backbone/`` holds them), a ``save_pretrained`` IResNet folder (``config.json``), a
    ``.safetensors`` file, or an arcface_torch ``.pth``. ``name``/``kwargs`` override the architecture;
    without them it comes from the config file or, for bare weight files, from the keys.
    """
    path = Path(path)
    if not path.exists():
        raise FacesynthError(f"{path}: backbone folder or file not found")
    config: dict[str, Any] = {}
    if path.is_dir():
        if (path / BACKBONE_CONFIG).is_file():
            weights = path / BACKBONE_WEIGHTS
            config = _read_config(path / BACKBONE_CONFIG)
        elif (path / "backbone" / BACKBONE_CONFIG).is_file():
            return load_backbone(path / "backbone", name, device, **kwargs)
        elif (path / "config.json").is_file() and name is None and not kwargs:
            return IResNet.from_pretrained(str(path)).to(device).eval()
        else:
            raise FacesynthError(f"{path}: no {BACKBONE_CONFIG} (or config.json) in this folder")
    else:
        weights = path
        if (path.parent / BACKBONE_CONFIG).is_file() and path.suffix == ".safetensors":
            config = _read_config(path.parent / BACKBONE_CONFIG)
    state = read_state_dict(weights)
    if name is None:
        if config:
            name = config.pop("backbone")
        else:
            try:
                name, config = iresnet_config_from_state_dict(state)
            except FacesynthError as exc:
                raise FacesynthError(f"{weights}: {exc}; pass the backbone name explicitly") from None
    elif config and config.pop("backbone") != name:
        config = {}  # another architecture asked for by name: the saved one's options do not apply
    config.update(kwargs)
    model = build_backbone(name, **config)
    load_state_dict_strict(model, state, str(weights))
    return model.to(device).eval()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise FacesynthError(f"{path}: cannot read backbone config ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("backbone"), str):
        raise FacesynthError(f"{path}: expected a JSON object with a 'backbone' name")
    return {k: v for k, v in data.items() if not k.startswith("_")}
