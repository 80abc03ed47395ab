"""What leaves the client: a tensor plus a small header (and, for DuetFace, named auxiliary tensors).

The header names the method that made the payload, the format version, the per-query shape and a
``key_id``: a short hash of the client-side configuration that the server's model was trained with
(method options, the key seed, PartialFace's tables, ...). The server refuses a payload whose method,
key, version or shape does not match its own, with a message saying which and why, instead of
silently embedding garbage.

Per-query randomness (DCTDP's noise draw, PartialFace's subset and permutation, MinusFace's shuffle
seed) is deliberately *not* in the header: a server that knew it could undo the protection.

Payloads serialise to bytes with safetensors (tensors + a JSON header in the metadata), so nothing is
unpickled on the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from facesynth.core.errors import FacesynthError

PAYLOAD_VERSION = 1
#: The one dtype a payload's tensors may have (what every client transform produces).
PAYLOAD_DTYPE = torch.float32
_MAIN = "payload"


@dataclass(frozen=True)
class PayloadHeader:
    """Metadata sent with a payload.

    Attributes:
        method: registered name of the privacy method (``dctdp``, ``partialface``, ...).
        key_id: hash of the client-side configuration; see the module docstring.
        channels: channels of the main tensor (e.g. 189, 27).
        shape: per-query shape of the main tensor, ``(channels, H, W)``.
        version: payload format version.
        extras: per-query shapes of auxiliary tensors by name (DuetFace's masks).
    """

    method: str
    key_id: str
    channels: int
    shape: tuple[int, ...]
    version: int = PAYLOAD_VERSION
    extras: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "key_id": self.key_id,
                "channels": self.channels,
                "shape": list(self.shape),
                "version": self.version,
                "extras": {k: list(v) for k, v in self.extras.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> PayloadHeader:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            if not isinstance(data.get("shape"), list) or not isinstance(data.get("extras", {}), dict):
                raise TypeError("'shape' must be a list and 'extras' an object")
            if any(not isinstance(v, list) for v in data.get("extras", {}).values()):
                raise TypeError("every extra's shape must be a list")
            return cls(
                method=str(data["method"]),
                key_id=str(data["key_id"]),
                channels=int(data["channels"]),
                shape=tuple(int(s) for s in data["shape"]),
                version=int(data["version"]),
                extras={str(k): tuple(int(s) for s in v) for k, v in data.get("extras", {}).items()},
            )
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise FacesynthError(f"payload header is not valid ({exc})") from None


@dataclass(frozen=True)
class Payload:
    """A batch of protected queries: ``tensor`` (B, *header.shape) and optional named ``extras``."""

    tensor: torch.Tensor
    header: PayloadHeader
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def batch_size(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data that cross the network (main tensor and extras)."""
        tensors = [self.tensor, *self.extras.values()]
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def validate(self) -> None:
        """Check that the tensors agree with the header (shape, channels, extras, batch size)."""
        h = self.header
        if not isinstance(h, PayloadHeader):
            raise FacesynthError(f"payload header must be a PayloadHeader, got {type(h).__name__}")
        if not isinstance(self.tensor, torch.Tensor):
            raise FacesynthError(f"payload tensor must be a torch.Tensor, got {type(self.tensor).__name__}")
        if not isinstance(self.extras, Mapping) or not all(
            isinstance(t, torch.Tensor) for t in self.extras.values()
        ):
            raise FacesynthError(f"{h.method} payload: extras must map names to tensors")
        if tuple(self.tensor.shape[1:]) != tuple(h.shape) or (h.shape and h.shape[0] != h.channels):
            raise FacesynthError(
                f"{h.method} payload: tensor shape {tuple(self.tensor.shape)} does not match its header "
                f"(B, {', '.join(map(str, h.shape))}) with {h.channels} channels"
            )
        if set(self.extras) != set(h.extras):
            raise FacesynthError(
                f"{h.method} payload: extras {sorted(self.extras)} do not match its header {sorted(h.extras)}"
            )
        for name, tensor in self.extras.items():
            if tuple(tensor.shape) != (self.batch_size, *h.extras[name]):
                raise FacesynthError(
                    f"{h.method} payload: extra {name!r} has shape {tuple(tensor.shape)}, "
                    f"header says (B={self.batch_size}, {', '.join(map(str, h.extras[name]))})"
                )

    def check_values(self, abs_max: float, extras_abs_max: float | None = None) -> None:
        """Refuse tensors a client could not have made: another dtype than float32, NaN or inf, or
        values beyond the method's declared bound (``abs_max``; ``extras_abs_max`` for extras)."""
        named = [("payload", self.tensor, abs_max)]
        named += [(f"extra {k!r}", t, extras_abs_max or abs_max) for k, t in self.extras.items()]
        for what, tensor, bound in named:
            if tensor.dtype != PAYLOAD_DTYPE:
                raise FacesynthError(
                    f"{self.header.method} {what}: dtype {str(tensor.dtype).replace('torch.', '')}, "
                    f"expected {str(PAYLOAD_DTYPE).replace('torch.', '')}"
                )
            if tensor.numel() == 0:
                continue
            if not bool(torch.isfinite(tensor).all()):
                raise FacesynthError(f"{self.header.method} {what}: holds NaN or infinite values")
            peak = float(tensor.abs().max())
            if peak > bound:
                raise FacesynthError(
                    f"{self.header.method} {what}: values up to {peak:.3g}, beyond the method's bound {bound:g}"
                )

    def check_for(self, expected: PayloadHeader) -> None:
        """Raise a clear error unless this payload was made for a server expecting ``expected``."""
        h = self.header
        if h.method != expected.method:
            raise FacesynthError(
                f"payload was made by privacy method {h.method!r}, but this server runs {expected.method!r}"
            )
        if h.version != expected.version:
            raise FacesynthError(
                f"payload format version {h.version} is not supported (expected {expected.version})"
            )
        if h.key_id != expected.key_id:
            raise FacesynthError(
                f"{h.method} payload was made with client key {h.key_id}, but this server's model expects "
                f"{expected.key_id} (another key seed, subset/permutation tables or method options)"
            )
        if tuple(h.shape) != tuple(expected.shape) or h.channels != expected.channels:
            raise FacesynthError(
                f"{h.method} payload has per-query shape {tuple(h.shape)}, this server expects {tuple(expected.shape)}"
            )
        if {k: tuple(v) for k, v in h.extras.items()} != {k: tuple(v) for k, v in expected.extras.items()}:
            raise FacesynthError(
                f"{h.method} payload extras {dict(h.extras)} do not match the server's {dict(expected.extras)}"
            )

    def to(self, device: torch.device | str) -> Payload:
        return Payload(self.tensor.to(device), self.header, {k: v.to(device) for k, v in self.extras.items()})

    def to_bytes(self) -> bytes:
        """Serialise with safetensors (no pickle)."""
        from safetensors.torch import save

        tensors = {_MAIN: self.tensor.detach().cpu().contiguous()}
        for name, tensor in self.extras.items():
            tensors[f"extra.{name}"] = tensor.detach().cpu().contiguous()
        return save(tensors, metadata={"facesynth_payload": self.header.to_json()})

    @classmethod
    def from_bytes(cls, data: bytes) -> Payload:
        """Inverse of :meth:`to_bytes`; a foreign or corrupt blob raises :class:`FacesynthError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            tensors = load(data)
            meta = _read_metadata(data)
        except (SafetensorError, ValueError, OSError) as exc:
            raise FacesynthError(f"not a facesynth payload ({exc})") from None
        if "facesynth_payload" not in meta or _MAIN not in tensors:
            raise FacesynthError("not a facesynth payload (no payload header in the safetensors metadata)")
        header = PayloadHeader.from_json(meta["facesynth_payload"])
        extras = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
        return cls(tensors[_MAIN], header, extras)


def _read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian length + JSON header)."""
    if len(data) < 8:
        raise ValueError("blob too short")
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n].decode("utf-8"))
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return meta
