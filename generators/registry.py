"""The generator registry: every face source that ``facesynth generate`` can drive.

A generator turns :class:`SampleRequest` s (identity label, image index, seed) into
:class:`GeneratedFace` s. It must be a pure function of each request: the same request gives the same
face whatever the batch it arrives in, the process it runs on, or the run it belongs to. That is
what makes generation independent of the number of processes and resumable after a crash.

Register with ``@register_generator("name")`` on a :class:`FaceGenerator` subclass whose
constructor takes ``num_identities``, ``seed``, ``device`` and its own keyword options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from facesynth.core.errors import ConfigError
from facesynth.core.registry import Registry


@dataclass(frozen=True)
class SampleRequest:
    """One image to make: class ``label`` (0..N-1), its ``index`` within the class, and its seed."""

    label: int
    index: int
    seed: int


@dataclass
class GeneratedFace:
    """An aligned 112x112 RGB face (HxWx3 uint8) and whatever the generator knows about it."""

    image: np.ndarray
    embedding: np.ndarray | None = None
    attributes: Mapping[str, float] | None = None
    anchor_cos: float | None = None
    id_cos: float | None = None
    #: (5, 2) pixel (x, y) landmarks on the crop when the generator knows them (shard column ``landmarks``)
    landmarks: np.ndarray | None = None


class FaceGenerator(ABC):
    """Base class of registered generators."""

    name: ClassVar[str] = ""
    #: Width of the ``embedding`` column this generator writes, or None for no embedding column.
    embedding_dim: int | None = None
    #: How many requests :meth:`generate` is handed at once.
    batch_size: int = 32

    @abstractmethod
    def generate(self, requests: Sequence[SampleRequest]) -> list[GeneratedFace]:
        """Make one face per request, in order."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The effective, JSON-serialisable settings; their hash identifies the dataset."""


#: Every generator ``facesynth generate`` can drive; built-ins are imported on first lookup.
GENERATORS: Registry[type[FaceGenerator]] = Registry(
    "generator",
    {
        "parametric": "facesynth.generators.parametric.renderer",
        "id3": "facesynth.generators.id3_generator",
        "arc2face": "facesynth.generators.arc2face_generator",
    },
)


def register_generator(name: str) -> Callable[[type[FaceGenerator]], type[FaceGenerator]]:
    """Class decorator: make a :class:`FaceGenerator` available to ``facesynth generate``."""

    def decorator(cls: type[FaceGenerator]) -> type[FaceGenerator]:
        GENERATORS.register(name)(cls)
        cls.name = name
        return cls

    return decorator


def available_generators() -> list[str]:
    """Names accepted by :func:`build_generator` (no provider is imported to list them)."""
    return GENERATORS.names()


def get_generator_class(name: str) -> type[FaceGenerator]:
    """The generator class registered as ``name`` (imports a built-in provider on first use)."""
    return GENERATORS.get(name)


def build_generator(
    name: str, *, num_identities: int, seed: int, device: Any = "cpu", **options: Any
) -> FaceGenerator:
    """Instantiate a registered generator for a dataset of ``num_identities`` classes."""
    cls = get_generator_class(name)
    try:
        return cls(num_identities=num_identities, seed=seed, device=device, **options)
    except TypeError as exc:
        raise ConfigError(f"generator {name!r}: bad options {sorted(options)} ({exc})") from None


def checked_dataset_args(generator: str, num_identities: Any, seed: Any) -> tuple[int, int]:
    """Validate the two arguments every generator constructor takes; clear errors name the generator."""
    if (
        isinstance(num_identities, bool)
        or not isinstance(num_identities, (int, np.integer))
        or num_identities < 1
    ):
        raise ConfigError(
            f"{generator} generator: num_identities must be a positive integer, got {num_identities!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{generator} generator: seed must be a non-negative integer, got {seed!r}")
    return int(num_identities), int(seed)


def sample_seed(global_seed: int, label: int, index: int) -> int:
    """The seed of image ``index`` of class ``label``: a pure function of the three numbers."""
    state = np.random.SeedSequence([int(global_seed) & 0xFFFFFFFF, int(label), int(index)]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF
