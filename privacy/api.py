"""Client/server API shared by every privacy method (protect -> payload -> recognize).

The privacy methods are recognition methods in the one registry
(:data:`facesynth.recognizers.methods.METHODS`); the helpers here only narrow it to privacy methods.

A :class:`PrivacyMethod` is a :class:`~facesynth.recognizers.methods.RecognitionMethod` (so the one
recognizer trainer trains it: ``facesynth train-recognizer --privacy NAME``) split into the two halves
of a deployment:

- client: :meth:`PrivacyMethod.protect` (images in [-1, 1] -> :class:`~facesynth.privacy.payload.Payload`,
  what leaves the device);
- server: :meth:`PrivacyMethod.recognize` (payload -> embeddings), which refuses payloads made by
  another method, key seed, table set or format version.

Subclasses implement :meth:`client_transform` (images -> the tensor that leaves the client, with the
training labels where the method conditions on them) and, if the server side is more than the
backbone, :meth:`server_forward`. Training runs the same two halves in one graph
(:meth:`forward`); evaluation (:meth:`embed`) goes through protect -> recognize with a fixed seed, so
benchmark numbers are the numbers of the deployed path.

``key_seed`` is a per-model option of every method: it seeds whatever is random but fixed per model
(PartialFace's tables when ``tables="random"``, MinusFace's shuffle key, ...). Per-query randomness
comes from the ``seed`` passed to :meth:`protect` and never leaves the client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch

from facesynth.core.errors import ConfigError, FacesynthError
from facesynth.privacy.frequency_frontend import FrequencyFrontend
from facesynth.privacy.payload import PAYLOAD_VERSION, Payload, PayloadHeader
from facesynth.recognizers.methods import (
    METHODS,
    RecognitionMethod,
    build_method,
    get_method_class,
    load_method,
    register_method,
)


def register_privacy_method(name: str) -> Callable[[type[PrivacyMethod]], type[PrivacyMethod]]:
    """Class decorator: register a :class:`PrivacyMethod` in the one method registry (``--privacy name``)."""

    def decorator(cls: type[PrivacyMethod]) -> type[PrivacyMethod]:
        if not issubclass(cls, PrivacyMethod):
            raise TypeError(f"{cls.__qualname__} must derive from PrivacyMethod")
        return register_method(name)(cls)

    return decorator


def available_privacy_methods() -> list[str]:
    """Names of the registered methods that are privacy methods (imports the built-in providers)."""
    return sorted(name for name, cls in METHODS.load_builtins().items() if issubclass(cls, PrivacyMethod))


def build_privacy_method(
    name: str, backbone: str = "r50", backbone_kwargs: Mapping[str, Any] | None = None, **kwargs: Any
) -> PrivacyMethod:
    """Build a registered privacy method; refuses a name that is a plain recognition method."""
    if not issubclass(get_method_class(name), PrivacyMethod):
        raise ConfigError(
            f"unknown privacy method {name!r}; available: {', '.join(available_privacy_methods())}"
        )
    method = build_method(name, backbone, backbone_kwargs, **kwargs)
    assert isinstance(method, PrivacyMethod)
    return method


def load_privacy_method(folder: str, device: str | torch.device = "cpu") -> PrivacyMethod:
    """Load a trained privacy method folder (``method_config.json`` + ``method.safetensors``), eval mode."""
    method = load_method(folder, device)
    if not isinstance(method, PrivacyMethod):
        raise FacesynthError(f"{folder}: holds the {method.name!r} method, which is not a privacy method")
    return method


def _seed_generator(seed: int | torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


class PrivacyMethod(RecognitionMethod):
    """Base of the privacy-preserving recognizers: frontend + client transform + server backbone.

    Args:
        backbone, backbone_kwargs: the server backbone (``in_channels`` is set by the method).
        in_channels: channels of the tensor the backbone receives (set by the subclass).
        frontend_mode: ``"tface"`` (TFace numerics) or ``"fast"``; see
            :mod:`facesynth.privacy.frequency_frontend`.
        key_seed: seed of the per-model random choices (part of the payload's key id).
        eval_seed: per-query seed used by :meth:`embed` (evaluation through the protected path).
    """

    #: whether protect() draws fresh randomness per query (benchmarks then average several seeds)
    randomised: bool = False
    #: whether the client uses per-face landmarks (training, protect and evaluation then pass them)
    uses_landmarks: bool = False
    #: largest magnitude a genuine payload can hold (DCT coefficients of [-1, 1] images plus any
    #: noise stay far below it); recognize() refuses larger values, NaN and inf
    payload_abs_max: float = 1e5
    #: the same bound for auxiliary tensors (None: ``payload_abs_max``)
    extras_abs_max: float | None = None

    def __init__(
        self,
        backbone: str = "r50",
        backbone_kwargs: Mapping[str, Any] | None = None,
        *,
        in_channels: int,
        frontend_mode: str = "tface",
        key_seed: int = 0,
        eval_seed: int = 0,
    ):
        kwargs = dict(backbone_kwargs or {})
        if "in_channels" in kwargs and int(kwargs["in_channels"]) != int(in_channels):
            raise ConfigError(
                f"backbone option in_channels={kwargs['in_channels']} conflicts with this privacy method, "
                f"whose server input has {in_channels} channels"
            )
        kwargs["in_channels"] = int(in_channels)
        super().__init__(backbone, kwargs)
        size = kwargs.get("input_size", (112, 112))
        if int(size[0]) != int(size[1]):
            raise ConfigError(f"privacy methods need square inputs, got backbone input_size={list(size)}")
        self.frontend = FrequencyFrontend(input_size=int(size[0]), mode=frontend_mode)
        if self.frontend.grid != int(size[0]):  # pragma: no cover - only with a non-default upsample
            raise ConfigError("the frontend's block grid must equal the backbone input size")
        self.frontend_mode = frontend_mode
        self.key_seed = int(key_seed)
        self.eval_seed = int(eval_seed)
        self.payload_channels = int(in_channels)

    # ------------------------------------------------------------------------------------------
    # to be provided by subclasses

    def client_transform(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> the main payload tensor (B, C, g, g)."""
        raise NotImplementedError

    def client_extras(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Auxiliary tensors that leave the client with the payload (none by default)."""
        return {}

    def extras_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-query shapes of :meth:`client_extras` (for the header)."""
        return {}

    def server_forward(self, tensor: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Server side: payload tensor (+ extras) -> unnormalised embeddings. Default: the backbone."""
        return self.backbone(tensor)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Extra training losses of the last forward (none by default)."""
        return {}

    def key_material(self) -> dict[str, Any]:
        """JSON-able client-side configuration that the server model depends on (subclasses extend)."""
        return {}

    # ------------------------------------------------------------------------------------------
    # the shared machinery

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.frontend.input_size, self.frontend.input_size)

    def payload_shape(self) -> tuple[int, int, int]:
        g = self.frontend.grid
        return (self.payload_channels, g, g)

    def key_id(self) -> str:
        """Short hash of the method name, frontend, key seed and :meth:`key_material`."""
        blob = json.dumps(
            {
                "method": self.name,
                "frontend": [self.frontend_mode, self.frontend.input_size, self.frontend.upsample],
                "key_seed": self.key_seed,
                "material": self.key_material(),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def expected_header(self) -> PayloadHeader:
        return PayloadHeader(
            method=self.name,
            key_id=self.key_id(),
            channels=self.payload_channels,
            shape=self.payload_shape(),
            version=PAYLOAD_VERSION,
            extras=self.extras_shapes(),
        )

    def _device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training (and plain) path: client transform and server model in one graph."""
        self.frontend.check_images(images)
        tensor = self.client_transform(images, labels if self.training else None, None)
        extras = self.client_extras(images)
        return self.server_forward(tensor, extras), self.aux_losses()

    @torch.no_grad()
    def protect(
        self,
        images: torch.Tensor,
        seed: int | torch.Generator | None = None,
        landmarks: torch.Tensor | None = None,
    ) -> Payload:
        """Client side: images (B, 3, S, S) in [-1, 1] -> the payload that leaves the device.

        ``seed`` fixes the per-query randomness (an int or a ``torch.Generator``); ``None`` uses
        torch's global generator. The seed is not part of the payload. ``landmarks`` (B, 5, 2) are
        used by methods with :attr:`uses_landmarks` and ignored by the others.
        """
        self.frontend.check_images(images)
        images = images.to(self._device())
        generator = _seed_generator(seed, images.device)
        tensor = self.client_transform(images, None, generator)
        extras = self.client_extras(images)
        return Payload(tensor.detach(), self.expected_header(), {k: v.detach() for k, v in extras.items()})

    @torch.no_grad()
    def recognize(self, payload: Payload) -> torch.Tensor:
        """Server side: payload -> unnormalised (B, D) embeddings; refuses foreign payloads."""
        if not isinstance(payload, Payload):
            raise FacesynthError(
                f"recognize() takes a Payload (from protect()), got {type(payload).__name__}"
            )
        payload.validate()  # the object may have been altered since it was built
        payload.check_for(self.expected_header())
        payload.check_values(self.payload_abs_max, self.extras_abs_max)
        payload = payload.to(self._device())
        return self.server_forward(payload.tensor, payload.extras)

    def reset_eval_rng(self, seed: int | None = None) -> None:
        """Restart the per-query random stream that :meth:`embed` uses (``seed`` defaults to ``eval_seed``).

        Evaluation is reproducible for a given seed and order of queries; each query still gets its
        own draw (the stream continues across batches).
        """
        if seed is not None:
            self.eval_seed = int(seed)
        self._eval_generator = None

    @torch.no_grad()
    def embed(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation through the full protected path, drawing from the ``eval_seed`` stream."""
        gen = getattr(self, "_eval_generator", None)
        device = self._device()
        if gen is None or gen.device.type != device.type:
            gen = _seed_generator(self.eval_seed, device)
            self._eval_generator = gen
        return self.recognize(self.protect(images, seed=gen, landmarks=landmarks))
