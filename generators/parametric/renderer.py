"""Parametric face renderer: a procedural 2D face generator in the spirit of DigiFace-1M.

It is the offline source of labelled faces for tests, demos and benchmarks, and a real baseline
generator: no weights, no GPU, a few milliseconds per image.

Every face is drawn from two sets of parameters:

* **identity** (:class:`IdentityParams`), drawn from ``(dataset seed, label)``: face outline and jaw,
  skin, eye / brow / nose / mouth / ear geometry and spacing, iris, lip, hair colour, hair style
  (volume, length, hairline, fringe, baldness), facial hair, moles, base age and greying;
* **nuisance** (:class:`NuisanceParams`), drawn from the request's seed: head pose (yaw and pitch
  as foreshortening with depth parallax, roll as in-plane rotation), scale and shift jitter, age
  jitter, light direction / ambient / colour, exposure and contrast, expression (smile, open mouth,
  eye openness, brow raise, gaze), glasses and hats, background, blur and sensor noise.

Shapes are evaluated as soft signed-distance masks on the pixel grid, each inside its own bounding
box; every part lives in a local frame whose image mapping combines the part's own rotation, the
pose foreshortening at its place on the head, the roll and the global scale. Yaw and pitch move a
part by ``depth * sin(angle)``, so the nose moves more than the eyes and the skull outline not at all.

Angles in ``attributes`` are degrees: ``yaw > 0`` turns the face towards the image's right (the nose
moves right), ``pitch > 0`` tilts it up (features move up), ``roll > 0`` rotates the face
counter-clockwise as seen in the image. ``age`` is in years. Ranges: ``|yaw| <= 60``,
``|pitch| <= 30``, ``|roll| <= 25``, ``10 <= age <= 90``, whatever the difficulty.

Before pose, faces sit on the ArcFace 112x112 five-point template (identity geometry moves the
points by a few pixels); :meth:`ParametricRenderer.landmarks` gives the five points of each rendered
image after pose.

Nuisance spreads at ``difficulty=1`` (each scales linearly with ``difficulty``; 0 gives frontal,
neutral, evenly lit faces on a plain grey background): yaw ~ N(0, 22 deg), pitch ~ N(0, 10 deg),
roll ~ N(0, 7 deg), scale x exp(N(0, 0.045)), shift N(0, 2 px), age = identity base age (16-80) +
N(0, 4 years), light azimuth N(0, 40 deg) and elevation 20 + N(0, 20) deg, glasses in 22% and hats
in 12% of images, 0-3 coloured background blobs, blur sigma U(0, 1.1) px, noise sigma U(0, 7) grey
levels. These values are this module's own calibration, not taken from DigiFace-1M: at the default
difficulty a raw-pixel verifier (32x32 grey, mean-removed cosine, best threshold) scores about 0.66-0.70
on fresh identities, 1.0 at difficulty 0 (``python -m facesynth.benchmarks.bench_parametric_renderer``).

Images are a pure function of ``(dataset seed, label, request seed, options)``: identity parameters
come from a numpy Generator seeded with ``(seed, label)`` and nuisance from one seeded with the
request seed, never from shared running state, so batching, order and process count do not matter.
Pixels are bit-identical for the same numpy build on the same CPU family (numpy's SIMD paths for
``exp``/``sin`` may differ in the last bit across CPUs, which can flip a rare 8-bit rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError
from facesynth.generators.parametric.geometry import Canvas, Pose
from facesynth.generators.parametric.painters import (
    apply_shading,
    eye_frame,
    finish_image,
    hair_colour,
    mouth_frame,
    nose_tip_z,
    paint_age_lines,
    paint_back_hair,
    paint_background,
    paint_beard,
    paint_brows,
    paint_ears,
    paint_eyes,
    paint_face,
    paint_forehead_hair,
    paint_glasses,
    paint_hat,
    paint_moles,
    paint_mouth,
    paint_neck,
    paint_nose,
    paint_skull_hair,
)
from facesynth.generators.parametric.parameters import (
    IdentityParams,
    NuisanceParams,
    identity_rng,
    nuisance_rng,
    sample_identity,
    sample_nuisance,
)
from facesynth.generators.registry import (
    FaceGenerator,
    GeneratedFace,
    SampleRequest,
    checked_dataset_args,
    register_generator,
)

#: Bump when a change alters the pixels a given request produces (it is part of ``config()``).
RENDERER_VERSION = 1


@dataclass
class RenderedFace:
    """One rendering: the image, its five landmarks (output pixels, ArcFace order) and attributes."""

    image: np.ndarray
    landmarks: np.ndarray
    attributes: dict[str, float]


def render_face(
    ident: IdentityParams, nz: NuisanceParams, image_size: int = 112, supersample: int = 1
) -> RenderedFace:
    """Draw one face back to front and return it with its landmarks and attributes."""
    size = image_size * supersample
    canvas = Canvas(size)
    pose = Pose(nz, image_size, supersample)
    hair = hair_colour(ident, nz.age)

    paint_background(canvas, nz)
    canvas.fg[:] = 0.0
    paint_back_hair(canvas, pose, ident, hair)
    paint_neck(canvas, pose, ident)
    paint_skull_hair(canvas, pose, ident, hair)
    paint_ears(canvas, pose, ident, front=False)
    paint_face(canvas, pose, ident, nz)
    paint_ears(canvas, pose, ident, front=True)
    paint_age_lines(canvas, pose, ident, nz.age)
    paint_moles(canvas, pose, ident)
    paint_beard(canvas, pose, ident, hair, moustache=False)
    paint_eyes(canvas, pose, ident, nz)
    paint_brows(canvas, pose, ident, nz)
    paint_nose(canvas, pose, ident, nz)
    paint_mouth(canvas, pose, ident, nz)
    paint_beard(canvas, pose, ident, hair, moustache=True)
    paint_forehead_hair(canvas, pose, ident, hair)
    if nz.glasses is not None:
        paint_glasses(canvas, pose, ident, nz.glasses)
    if nz.hat is not None:
        paint_hat(canvas, pose, ident, nz.hat)
    apply_shading(canvas, pose, ident, nz)

    image = finish_image(canvas.rgb, nz, supersample)
    return RenderedFace(
        image=image, landmarks=face_landmarks(ident, nz, image_size), attributes=attributes(nz)
    )


def attributes(nz: NuisanceParams) -> dict[str, float]:
    """The ``attributes`` column: pose angles in degrees and age in years."""
    return {"yaw": nz.yaw, "pitch": nz.pitch, "roll": nz.roll, "age": nz.age}


def face_landmarks(ident: IdentityParams, nz: NuisanceParams, image_size: int = 112) -> np.ndarray:
    """(5, 2) landmarks of the rendered face in output pixels (ArcFace order), without rendering.

    Eye centres, nose tip and mouth corners after pose, from the same frames the painter uses.
    Pixel ``(i, j)`` has its centre at ``x = j, y = i`` (the OpenCV / ArcFace-template convention).
    """
    pose = Pose(nz, image_size, 1)
    frame, hw = mouth_frame(pose, ident, nz)
    corner_y = -2.6 * nz.smile
    points = [
        eye_frame(pose, ident, -1.0)[0].to_image(0.0, 0.0),
        eye_frame(pose, ident, 1.0)[0].to_image(0.0, 0.0),
        pose.frame(0.0, ident.nose_v, nose_tip_z(ident)).to_image(0.0, 0.0),
        frame.to_image(-hw, corner_y),
        frame.to_image(hw, corner_y),
    ]
    return np.array(points, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# The registered generator
# ----------------------------------------------------------------------------------------------


class ParametricOptions(StageConfig):
    """Options of the ``parametric`` generator (``facesynth generate --generator parametric``)."""

    image_size: int = Field(
        default=112, ge=32, le=512, description="output side in pixels (faces scale with it)"
    )
    difficulty: float = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description="nuisance strength: 0 = frontal, neutral, plain background; 1 = default (raw-pixel "
        "verification well below a trained recognizer); 2 = extreme",
    )
    supersample: int = Field(
        default=1, ge=1, le=4, description="render at k x resolution and box-average down"
    )
    batch_size: int = Field(default=64, ge=1, le=100_000, description="requests per generate() call")


@register_generator("parametric")
class ParametricRenderer(FaceGenerator):
    """Procedural faces: identity from ``(seed, label)``, nuisance from each request's seed.

    Options (validated, a bad one raises :class:`ConfigError` naming it): ``image_size`` (112),
    ``difficulty`` (1.0, in [0, 2]), ``supersample`` (1, in [1, 4]), ``batch_size`` (64). ``device``
    is accepted for interface compatibility; rendering is numpy on the CPU.
    """

    embedding_dim = None

    def __init__(self, num_identities: int, seed: int, device: Any = "cpu", **options: Any):
        self.num_identities, self.seed = checked_dataset_args("parametric", num_identities, seed)
        self.options = ParametricOptions.from_mapping(dict(options), source="parametric generator options")
        self.device = device
        self.batch_size = self.options.batch_size
        self._identities: dict[int, IdentityParams] = {}

    def config(self) -> dict[str, Any]:
        return {
            "renderer_version": RENDERER_VERSION,
            "num_identities": self.num_identities,
            "seed": self.seed,
            "image_size": self.options.image_size,
            "difficulty": self.options.difficulty,
            "supersample": self.options.supersample,
        }

    def identity(self, label: int) -> IdentityParams:
        """The identity parameters of class ``label`` (a pure function of the dataset seed and label)."""
        label = int(label)
        if not 0 <= label < self.num_identities:
            raise FacesynthError(
                f"parametric generator: label {label} is outside 0..{self.num_identities - 1}"
            )
        params = self._identities.get(label)
        if params is None:
            params = sample_identity(identity_rng(self.seed, label))
            if len(self._identities) > 100_000:
                self._identities.clear()
            self._identities[label] = params
        return params

    def nuisance(self, request: SampleRequest) -> NuisanceParams:
        """The nuisance parameters of one request (a pure function of its seed and the identity)."""
        return sample_nuisance(
            nuisance_rng(request.seed), self.options.difficulty, self.identity(request.label)
        )

    def render(self, request: SampleRequest) -> RenderedFace:
        """Image, landmarks and attributes of one request."""
        return render_face(
            self.identity(request.label),
            self.nuisance(request),
            self.options.image_size,
            self.options.supersample,
        )

    def landmarks(self, requests: Sequence[SampleRequest]) -> np.ndarray:
        """(B, 5, 2) landmarks of the requests' images (output pixels, ArcFace order), without rendering."""
        out = np.zeros((len(requests), 5, 2))
        for i, request in enumerate(requests):
            out[i] = face_landmarks(
                self.identity(request.label), self.nuisance(request), self.options.image_size
            )
        return out

    def generate(self, requests: Sequence[SampleRequest]) -> list[GeneratedFace]:
        faces = []
        for request in requests:
            out = self.render(request)
            faces.append(
                GeneratedFace(
                    image=out.image, embedding=None, attributes=out.attributes, landmarks=out.landmarks
                )
            )
        return faces
