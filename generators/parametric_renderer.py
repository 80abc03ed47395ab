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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field
from scipy.ndimage import gaussian_filter

from facesynth.core.config import StageConfig
from facesynth.core.errors import FacesynthError
from facesynth.generators.registry import (
    FaceGenerator,
    GeneratedFace,
    SampleRequest,
    checked_dataset_args,
    register_generator,
)
from facesynth.recognizers.alignment import ARCFACE_TEMPLATE

#: Bump when a change alters the pixels a given request produces (it is part of ``config()``).
RENDERER_VERSION = 1

#: ArcFace 112x112 five-point template (the one alignment warps real faces onto).
ARCFACE_TEMPLATE_112 = ARCFACE_TEMPLATE
#: Head-frame origin in 112x112 template pixels. Head-frame units are template pixels at 112x112.
HEAD_CENTRE_112 = (56.0, 62.0)
ATTRIBUTE_RANGES = {"yaw": (-60.0, 60.0), "pitch": (-30.0, 30.0), "roll": (-25.0, 25.0), "age": (10.0, 90.0)}

_F = np.float32
_Colour = tuple[float, float, float]

# Palettes (linear-ish RGB in [0, 1]); colours are interpolated / jittered around these anchors.
_SKIN_ANCHORS = np.array(
    [[0.30, 0.19, 0.13], [0.50, 0.33, 0.22], [0.71, 0.51, 0.38], [0.86, 0.67, 0.54], [0.96, 0.81, 0.71]]
)
_HAIR_COLOURS = np.array(
    [
        [0.06, 0.05, 0.05],  # black
        [0.17, 0.10, 0.06],  # dark brown
        [0.33, 0.21, 0.12],  # brown
        [0.53, 0.38, 0.23],  # light brown
        [0.82, 0.68, 0.44],  # blond
        [0.55, 0.23, 0.10],  # auburn / red
    ]
)
_HAIR_WEIGHTS = np.array([0.30, 0.25, 0.18, 0.11, 0.09, 0.07])
_IRIS_COLOURS = np.array(
    [
        [0.20, 0.12, 0.06],
        [0.36, 0.22, 0.10],
        [0.45, 0.40, 0.20],
        [0.30, 0.45, 0.30],
        [0.30, 0.45, 0.65],
        [0.50, 0.55, 0.60],
    ]
)
_IRIS_WEIGHTS = np.array([0.35, 0.25, 0.12, 0.08, 0.12, 0.08])
_GREY_HAIR = np.array([0.78, 0.77, 0.75])
_HAIR_STYLES = ("bald", "short", "medium", "long")
_BEARDS = ("none", "stubble", "moustache", "goatee", "full")


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityParams:
    """What stays fixed across all images of one identity (lengths in head-frame template pixels)."""

    skin: _Colour
    lip: _Colour
    hair: _Colour
    brow: _Colour
    iris: _Colour
    face_hw: float  # half-width of the face outline at cheek level
    face_top: float  # v of the top of the face outline (under the hair)
    chin_v: float  # v of the chin
    jaw_taper: float  # how much narrower the outline gets towards the chin (0..1)
    eye_dx: float  # half the distance between the eye centres
    eye_v: float
    eye_hw: float
    eye_hh: float
    eye_tilt: float  # degrees, outer corner up when > 0
    eye_asym: float  # right eye lower by this much
    iris_r: float
    brow_gap: float  # brow centre above the eye centre
    brow_hl: float  # brow half-length
    brow_th: float
    brow_arch: float
    brow_tilt: float  # degrees, outer end up when > 0
    nose_v: float  # v of the nose tip
    nose_hw: float  # half-width of the nose wings
    nostril_r: float
    nose_depth: float  # how far the tip stands out (drives yaw parallax)
    mouth_v: float
    mouth_hw: float
    lip_up: float
    lip_lo: float
    ear_rx: float
    ear_ry: float
    ear_dv: float  # ear centre below the eye line
    neck_hw: float
    hair_style: str
    hair_volume: float
    hairline_v: float
    temple_drop: float
    fringe_v: float | None
    fringe_amp: float
    fringe_freq: float
    fringe_phase: float
    streak_freq: float
    streak_angle: float
    beard: str
    beard_density: float
    moles: tuple[tuple[float, float, float], ...]
    blush: float
    base_age: float
    greying: float  # 0 (never greys) .. 1 (greys early)


@dataclass(frozen=True)
class Glasses:
    round_frames: bool
    colour: _Colour
    thickness: float
    tint: float  # 0 = clear lenses, up to ~0.8 for sunglasses
    lens_hh: float


@dataclass(frozen=True)
class Hat:
    colour: _Colour
    brim_v: float


@dataclass(frozen=True)
class NuisanceParams:
    """What changes from image to image (angles in degrees)."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    shift: tuple[float, float]
    age: float
    light_az: float
    light_el: float
    ambient: float
    light_colour: _Colour
    exposure: float
    contrast: float
    smile: float
    mouth_open: float
    eye_open: float
    brow_raise: float
    gaze: tuple[float, float]
    glasses: Glasses | None
    hat: Hat | None
    bg_colours: tuple[_Colour, _Colour]
    bg_angle: float
    bg_blobs: tuple[tuple[float, float, float, _Colour, float], ...]
    blur_sigma: float
    noise_sigma: float
    noise_seed: int


def _rng(*words: int) -> np.random.Generator:
    """A numpy Generator seeded only by ``words`` (64-bit values are split into 32-bit words)."""
    entropy: list[int] = []
    for word in words:
        word = int(word) & 0xFFFF_FFFF_FFFF_FFFF
        entropy += [word & 0xFFFFFFFF, word >> 32]
    return np.random.default_rng(np.random.SeedSequence(entropy))


_IDENTITY_STREAM = 0x1D_F4CE
_NUISANCE_STREAM = 0x0005_EED5


def identity_rng(dataset_seed: int, label: int) -> np.random.Generator:
    """The Generator identity parameters are drawn from: a function of (dataset seed, label) only."""
    return _rng(_IDENTITY_STREAM, dataset_seed, label)


def nuisance_rng(request_seed: int) -> np.random.Generator:
    """The Generator per-image nuisance parameters are drawn from: a function of the request seed."""
    return _rng(_NUISANCE_STREAM, request_seed)


def _colour(values: Any) -> _Colour:
    r, g, b = (float(np.clip(v, 0.0, 1.0)) for v in values)
    return (r, g, b)


def sample_identity(rng: np.random.Generator) -> IdentityParams:
    """Draw one identity. Geometry is centred on the ArcFace template (see ``HEAD_CENTRE_112``)."""
    u = rng.uniform
    tone = u(0.0, 1.0) * (len(_SKIN_ANCHORS) - 1)
    low = int(min(tone, len(_SKIN_ANCHORS) - 2))
    skin = _SKIN_ANCHORS[low] + (tone - low) * (_SKIN_ANCHORS[low + 1] - _SKIN_ANCHORS[low])
    skin = skin * (1.0 + np.array([u(-0.04, 0.06), u(-0.04, 0.03), u(-0.05, 0.05)]))
    lip = skin + u(0.35, 0.65) * (np.array([0.70, 0.25, 0.28]) - skin)
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)] * u(0.85, 1.15, size=3)
    brow = hair * u(0.55, 0.85) + np.array([0.02, 0.015, 0.01])
    iris = _IRIS_COLOURS[rng.choice(len(_IRIS_COLOURS), p=_IRIS_WEIGHTS)] * u(0.85, 1.15, size=3)

    tl, tr, tn, tml, tmr = ARCFACE_TEMPLATE_112 - np.array(HEAD_CENTRE_112)
    eye_v = float((tl[1] + tr[1]) / 2) + u(-2.5, 2.5)
    nose_v = eye_v + float(tn[1] - (tl[1] + tr[1]) / 2) + u(-3.0, 3.0)
    mouth_v = nose_v + float((tml[1] + tmr[1]) / 2 - tn[1]) + u(-3.0, 3.0)
    chin_v = mouth_v + u(10.0, 17.0)
    base_age = u(16.0, 80.0)

    style = str(rng.choice(_HAIR_STYLES, p=[0.07, 0.45, 0.23, 0.25]))
    has_fringe = style in ("short", "medium", "long") and u() < 0.3
    beard = str(rng.choice(_BEARDS, p=[0.62, 0.12, 0.09, 0.07, 0.10]))
    n_moles = int(rng.choice(4, p=[0.45, 0.3, 0.15, 0.1]))
    moles = tuple(
        (u(-26.0, 26.0), u(-22.0, 32.0), u(0.8, 1.7)) for _ in range(n_moles)
    )  # filtered to the face outline when drawn
    return IdentityParams(
        skin=_colour(skin),
        lip=_colour(lip),
        hair=_colour(hair),
        brow=_colour(brow),
        iris=_colour(iris),
        face_hw=u(32.0, 39.0),
        face_top=u(-50.0, -44.0),
        chin_v=chin_v,
        jaw_taper=u(0.15, 0.5),
        eye_dx=float(tr[0] - tl[0]) / 2 + u(-2.5, 2.5),
        eye_v=eye_v,
        eye_hw=u(6.2, 8.4),
        eye_hh=u(2.2, 3.8),
        eye_tilt=u(-9.0, 9.0),
        eye_asym=u(-0.8, 0.8),
        iris_r=u(2.1, 3.1),
        brow_gap=u(6.5, 10.5),
        brow_hl=u(7.0, 11.0),
        brow_th=u(1.4, 3.6),
        brow_arch=u(0.5, 4.0),
        brow_tilt=u(-10.0, 10.0),
        nose_v=nose_v,
        nose_hw=u(6.0, 9.5),
        nostril_r=u(1.0, 2.0),
        nose_depth=u(9.0, 18.0),
        mouth_v=mouth_v,
        mouth_hw=float(tmr[0] - tml[0]) / 2 + u(-3.0, 3.0),
        lip_up=u(1.3, 3.4),
        lip_lo=u(1.8, 4.4),
        ear_rx=u(3.5, 5.5),
        ear_ry=u(8.0, 11.5),
        ear_dv=u(5.0, 10.0),
        neck_hw=u(14.0, 21.0),
        hair_style=style,
        hair_volume=u(0.0, 8.0),
        hairline_v=u(-46.0, -33.0) if style != "bald" else u(-62.0, -56.0),
        temple_drop=u(2.0, 11.0),
        fringe_v=u(-35.0, -21.0) if has_fringe else None,
        fringe_amp=u(0.5, 3.0),
        fringe_freq=u(0.15, 0.6),
        fringe_phase=u(0.0, 2 * math.pi),
        streak_freq=u(0.5, 1.4),
        streak_angle=u(-0.6, 0.6),
        beard=beard,
        beard_density=u(0.45, 0.95),
        moles=moles,
        blush=u(0.0, 0.25),
        base_age=base_age,
        greying=u(0.0, 1.0),
    )


def sample_nuisance(rng: np.random.Generator, difficulty: float, identity: IdentityParams) -> NuisanceParams:
    """Draw one image's nuisance; ``difficulty`` scales every spread (0 = frontal, plain, neutral)."""
    d = float(difficulty)
    u, n = rng.uniform, rng.normal
    lo, hi = ATTRIBUTE_RANGES["yaw"]
    yaw = float(np.clip(n(0.0, 22.0 * d), lo, hi))
    lo, hi = ATTRIBUTE_RANGES["pitch"]
    pitch = float(np.clip(n(0.0, 10.0 * d), lo, hi))
    lo, hi = ATTRIBUTE_RANGES["roll"]
    roll = float(np.clip(n(0.0, 7.0 * d), lo, hi))
    lo, hi = ATTRIBUTE_RANGES["age"]
    age = float(np.clip(identity.base_age + n(0.0, 4.0 * d), lo, hi))

    glasses = None
    if u() < 0.22 * min(d, 1.5):
        sun = u() < 0.25
        glasses = Glasses(
            round_frames=bool(u() < 0.4),
            colour=_colour(u(0.0, 0.45, size=3) if u() < 0.7 else u(0.3, 0.9, size=3)),
            thickness=u(0.8, 2.0),
            tint=u(0.55, 0.85) if sun else u(0.0, 0.12),
            lens_hh=u(4.5, 7.0),
        )
    hat = None
    if u() < 0.12 * min(d, 1.5):
        hat = Hat(colour=_colour(u(0.05, 0.9, size=3)), brim_v=u(-38.0, -26.0))

    grey = 0.55 + min(d, 1.0) * u(-0.3, 0.25)
    bg_a = np.clip(grey + d * u(-0.45, 0.45, size=3), 0.0, 1.0)
    bg_b = np.clip(bg_a + d * u(-0.35, 0.35, size=3), 0.0, 1.0)
    n_blobs = int(rng.integers(0, 4)) if d > 0 else 0
    blobs = tuple(
        (u(0.0, 1.0), u(0.0, 1.0), u(0.08, 0.35), _colour(u(0.0, 1.0, size=3)), u(0.3, 0.9) * min(d, 1.0))
        for _ in range(n_blobs)
    )
    return NuisanceParams(
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        scale=float(np.exp(n(0.0, 0.045 * d))),
        shift=(float(n(0.0, 2.0 * d)), float(n(0.0, 2.0 * d))),
        age=age,
        light_az=float(np.clip(n(0.0, 40.0 * d), -85.0, 85.0)),
        light_el=float(np.clip(20.0 + n(0.0, 20.0 * d), -30.0, 70.0)),
        ambient=float(np.clip(0.62 - d * u(0.0, 0.4), 0.15, 0.9)),
        light_colour=_colour(1.0 + d * np.array([1.0, 0.0, -1.0]) * n(0.0, 0.07) + d * n(0.0, 0.025, size=3)),
        exposure=float(np.exp(n(0.0, 0.16 * d))),
        contrast=float(np.exp(n(0.0, 0.12 * d))),
        smile=float(np.clip(n(0.25, 0.45 * d), -0.4, 1.2)) if d > 0 else 0.0,
        mouth_open=float(max(0.0, n(-0.4, 0.7 * d))) if d > 0 else 0.0,
        eye_open=float(np.clip(1.0 - abs(n(0.0, 0.18 * d)), 0.25, 1.0)),
        brow_raise=float(n(0.0, 1.3 * d)),
        gaze=(float(n(0.0, 0.9 * d)), float(n(0.0, 0.5 * d))),
        glasses=glasses,
        hat=hat,
        bg_colours=(_colour(bg_a), _colour(bg_b)),
        bg_angle=u(0.0, 2 * math.pi),
        bg_blobs=blobs,
        blur_sigma=float(u(0.0, 1.1 * d)),
        noise_sigma=float(u(0.0, 0.028 * d)),
        noise_seed=int(rng.integers(0, 2**63 - 1)),
    )


# ----------------------------------------------------------------------------------------------
# Geometry: head frame -> image, and local part frames
# ----------------------------------------------------------------------------------------------


def _rot(deg: float) -> tuple[float, float, float, float]:
    """2x2 rotation matrix (row-major tuple); plain floats keep per-part overhead low."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, s, c)


def _matmul(m: tuple[float, float, float, float], n: tuple[float, float, float, float]):
    return (
        m[0] * n[0] + m[1] * n[2],
        m[0] * n[1] + m[1] * n[3],
        m[2] * n[0] + m[3] * n[2],
        m[2] * n[1] + m[3] * n[3],
    )


class _Frame:
    """A part's local coordinates: ``image = origin + jac @ local`` (image in supersampled pixels)."""

    def __init__(self, origin: tuple[float, float], jac: tuple[float, float, float, float]):
        self.ox, self.oy = origin
        self.jac = jac
        a, b, c, d = jac
        det = a * d - b * c
        self.inv = (d / det, -b / det, -c / det, a / det)
        self.px = 1.0 / math.sqrt(abs(det))  # local units per image pixel

    def to_image(self, lx: float, ly: float) -> tuple[float, float]:
        a, b, c, d = self.jac
        return self.ox + a * lx + b * ly, self.oy + c * lx + d * ly

    def region(self, x0: float, x1: float, y0: float, y1: float, size: int):
        """Pixels whose local coords may fall in ``[x0,x1]x[y0,y1]``: (slices, lx, ly) or None."""
        a, b, c, d = self.jac
        xs = (a * x0 + b * y0, a * x1 + b * y0, a * x0 + b * y1, a * x1 + b * y1)
        ys = (c * x0 + d * y0, c * x1 + d * y0, c * x0 + d * y1, c * x1 + d * y1)
        c0 = max(0, math.floor(self.ox + min(xs)) - 1)
        c1 = min(size, math.ceil(self.ox + max(xs)) + 2)
        r0 = max(0, math.floor(self.oy + min(ys)) - 1)
        r1 = min(size, math.ceil(self.oy + max(ys)) + 2)
        if c0 >= c1 or r0 >= r1:
            return None
        dx = (_arange(size)[c0:c1] - _F(self.ox))[None, :]
        dy = (_arange(size)[r0:r1] - _F(self.oy))[:, None]
        ia, ib, ic, id_ = (_F(t) for t in self.inv)
        return (slice(r0, r1), slice(c0, c1)), ia * dx + ib * dy, ic * dx + id_ * dy


@lru_cache(maxsize=8)
def _arange(size: int) -> np.ndarray:
    out = np.arange(size, dtype=_F)
    out.flags.writeable = False
    return out


class _Pose:
    """Maps head-frame points (u, v, depth z towards the camera) to supersampled image pixels."""

    def __init__(self, nuisance: NuisanceParams, image_size: int, supersample: int):
        self.yaw, self.pitch = math.radians(nuisance.yaw), math.radians(nuisance.pitch)
        self.unit = nuisance.scale * image_size / 112.0 * supersample  # image px per head unit
        # Template pixels -> output pixels (pixel centres at integers), then -> supersampled pixels.
        k = image_size / 112.0 * supersample
        cx = (HEAD_CENTRE_112[0] + nuisance.shift[0] + 0.5) * k - 0.5
        cy = (HEAD_CENTRE_112[1] + nuisance.shift[1] + 0.5) * k - 0.5
        self.centre = (cx, cy)
        # In-plane: roll > 0 is counter-clockwise on screen (y points down, hence the minus sign).
        self.inplane = tuple(self.unit * t for t in _rot(-nuisance.roll))

    def project(self, u: float, v: float, z: float) -> tuple[float, float]:
        """Yaw about the vertical axis, then pitch about the horizontal one; (x, y) in head units."""
        cy_, sy_ = math.cos(self.yaw), math.sin(self.yaw)
        x1, z1 = u * cy_ + z * sy_, -u * sy_ + z * cy_
        return x1, v * math.cos(self.pitch) - z1 * math.sin(self.pitch)

    def depth_after(self, u: float, z: float) -> float:
        """Depth of a point after yaw (negative: behind the head's centre plane)."""
        return -u * math.sin(self.yaw) + z * math.cos(self.yaw)

    def frame(
        self,
        u: float,
        v: float,
        z: float,
        angle: float = 0.0,
        fx: float | None = None,
        fy: float | None = None,
    ) -> _Frame:
        """Frame of a part centred at (u, v, z), rotated by ``angle`` degrees (frontal view).

        ``fx``/``fy`` are the horizontal/vertical foreshortening; by default they follow the surface
        orientation at (u, v): a patch facing ``theta`` away from the camera shrinks by
        ``cos(theta + yaw) / cos(theta)``.
        """
        if fx is None:
            theta = math.atan2(u, 60.0)
            fx = max(0.05, math.cos(theta + self.yaw)) / math.cos(theta)
        if fy is None:
            phi = math.atan2(v, 85.0)
            fy = max(0.05, math.cos(phi - self.pitch)) / math.cos(phi)
        jac = _matmul(_matmul(self.inplane, (fx, 0.0, 0.0, fy)), _rot(angle))
        px, py = self.project(u, v, z)
        a, b, c, d = self.inplane
        return _Frame((self.centre[0] + a * px + b * py, self.centre[1] + c * px + d * py), jac)


def _surface_z(u: float, v: float) -> float:
    """Depth of the face surface at (u, v): a flattened ellipsoid in front of the head's centre."""
    return 38.0 * math.sqrt(max(0.05, 1.0 - (u / 48.0) ** 2 - (v / 64.0) ** 2))


# ----------------------------------------------------------------------------------------------
# Canvas and shape primitives
# ----------------------------------------------------------------------------------------------


class _Canvas:
    def __init__(self, size: int):
        self.size = size
        self.rgb = np.zeros((size, size, 3), dtype=_F)
        self.fg = np.zeros((size, size), dtype=_F)  # coverage of the head (for shading)

    def paint(self, sl, alpha: np.ndarray, colour, fg: bool = True) -> None:
        """Alpha-composite ``colour`` (an RGB triple or an hxwx3 array) over the region ``sl``."""
        patch = self.rgb[sl]
        patch += alpha[..., None] * (np.asarray(colour, dtype=_F) - patch)
        if fg:
            self.fg[sl] += alpha * (1.0 - self.fg[sl])

    def darken(self, sl, amount: np.ndarray) -> None:
        """Multiply the region by ``1 - amount`` (soft shadows, creases)."""
        self.rgb[sl] *= (1.0 - amount)[..., None]


def _cover(sd: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage of a signed distance (negative inside), one pixel wide ramp."""
    out = _F(0.5) - sd * _F(1.0 / px)
    return np.minimum(np.maximum(out, _F(0.0), out=out), _F(1.0), out=out)


def _ellipse_sd(lx: np.ndarray, ly: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (first-order, exact on the boundary)."""
    qx, qy = lx / _F(rx), ly / _F(ry)
    k = np.sqrt(qx * qx + qy * qy)
    g = np.sqrt((qx / _F(rx)) ** 2 + (qy / _F(ry)) ** 2)
    return (k - 1.0) * k / np.maximum(g, _F(1e-6))


def _band(ly: np.ndarray, top: np.ndarray, bottom: np.ndarray, px: float) -> np.ndarray:
    """Coverage of ``top <= ly <= bottom`` (``top``/``bottom`` may vary along x)."""
    return _cover(np.maximum(top - ly, ly - bottom), px)


def _gauss(lx: np.ndarray, ly: np.ndarray, rx: float, ry: float) -> np.ndarray:
    return np.exp(-0.5 * ((lx / _F(rx)) ** 2 + (ly / _F(ry)) ** 2))


def _draw_ellipse(canvas: _Canvas, frame: _Frame, rx: float, ry: float, colour, fg: bool = True) -> None:
    reg = frame.region(-rx - 1, rx + 1, -ry - 1, ry + 1, canvas.size)
    if reg is not None:
        sl, lx, ly = reg
        canvas.paint(sl, _cover(_ellipse_sd(lx, ly, rx, ry), frame.px), colour, fg)


def _soft_shadow(canvas: _Canvas, frame: _Frame, rx: float, ry: float, amount: float) -> None:
    reg = frame.region(-2.5 * rx, 2.5 * rx, -2.5 * ry, 2.5 * ry, canvas.size)
    if reg is not None and amount > 0:
        sl, lx, ly = reg
        canvas.darken(sl, _F(amount) * _gauss(lx, ly, rx, ry))


# ----------------------------------------------------------------------------------------------
# Face parts (drawn back to front)
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(size, dtype=_F) + 0.5) / _F(size)
    return t[None, :], t[:, None]


def _paint_background(canvas: _Canvas, nz: NuisanceParams) -> None:
    gx, gy = _unit_grid(canvas.size)
    a, b = (np.array(c, dtype=_F) for c in nz.bg_colours)
    t = _F(math.cos(nz.bg_angle)) * (gx - 0.5) + _F(math.sin(nz.bg_angle)) * (gy - 0.5)
    canvas.rgb[:] = a + (t[..., None] + 0.5) * (b - a)
    for bx, by, r, colour, strength in nz.bg_blobs:  # gaussian blobs, separable in x and y
        k = _F(-0.5 / (r * r))
        w = (_F(strength) * np.exp(k * (gx - _F(bx)) ** 2)) * np.exp(k * (gy - _F(by)) ** 2)
        canvas.rgb += w[..., None] * (np.array(colour, dtype=_F) - canvas.rgb)


def _hair_colour(ident: IdentityParams, age: float) -> np.ndarray:
    grey = np.clip((age - 72.0 + 32.0 * ident.greying) / 25.0, 0.0, 0.9)  # starts at 40..72 years
    return np.array(ident.hair) + grey * (_GREY_HAIR - np.array(ident.hair))


def _hair_texture(lx: np.ndarray, ly: np.ndarray, ident: IdentityParams, colour: np.ndarray) -> np.ndarray:
    """Hair colour with identity-specific streaks (a fixed pattern in the head frame)."""
    ca, sa = math.cos(ident.streak_angle), math.sin(ident.streak_angle)
    phase = _F(ident.streak_freq) * (_F(ca) * lx + _F(sa) * ly)
    shade = _F(1.0) + _F(0.12) * np.sin(phase)
    return shade[..., None] * colour.astype(_F)


def _paint_back_hair(canvas: _Canvas, pose: _Pose, ident: IdentityParams, hair: np.ndarray) -> None:
    """Long / medium hair falling behind the neck and beside the face."""
    if ident.hair_style not in ("medium", "long"):
        return
    bottom = 32.0 if ident.hair_style == "medium" else 90.0
    hw = ident.face_hw + 5.0 + ident.hair_volume
    frame = pose.frame(0.0, 0.0, -10.0, fx=1.0, fy=1.0)
    reg = frame.region(-hw - 2, hw + 2, -20.0, bottom + 2, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    t = np.clip((ly - _F(bottom - 14.0)) / _F(14.0), 0.0, 1.0)  # rounded ends ...
    wave = _F(1.5) * np.sin(_F(0.25) * ly + _F(ident.fringe_phase))  # ... and wavy sides
    width = _F(hw) * np.sqrt(_F(1.0) - t * t) + wave
    alpha = _cover(np.maximum(np.abs(lx) - width, np.maximum(-10.0 - ly, ly - bottom)), frame.px)
    canvas.paint(sl, alpha, _hair_texture(lx, ly, ident, hair))


def _paint_neck(canvas: _Canvas, pose: _Pose, ident: IdentityParams) -> None:
    frame = pose.frame(0.0, ident.chin_v, -6.0, fx=1.0, fy=1.0)
    hw = ident.neck_hw
    reg = frame.region(-hw - 12, hw + 12, -25.0, 90.0, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    width = hw + np.maximum(ly - 20.0, 0.0) * 0.6  # flares into the shoulders
    alpha = _cover(np.maximum(np.abs(lx) - width, -25.0 - ly), frame.px)
    shadow = 0.55 + 0.25 * np.clip((ly + 5.0) / 30.0, 0.0, 1.0)  # darkest right under the jaw
    colour = (shadow[..., None] * np.array(ident.skin, dtype=_F)).astype(_F)
    canvas.paint(sl, alpha, colour)


def _paint_skull_hair(canvas: _Canvas, pose: _Pose, ident: IdentityParams, hair: np.ndarray) -> None:
    """Hair over the top and sides of the skull (the face outline is drawn over it)."""
    if ident.hair_style == "bald":
        return
    rx = ident.face_hw + 3.0 + ident.hair_volume
    ry = 52.0 + ident.hair_volume
    bottom = {"short": ident.eye_v + 4.0, "medium": 32.0, "long": 45.0}[ident.hair_style]
    frame = pose.frame(0.0, -6.0, 0.0, fx=1.0, fy=1.0)
    reg = frame.region(-rx - 1, rx + 1, -ry - 1, bottom + 8.0, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    q = lx / _F(rx)
    lower_edge = _F(bottom - 6.0) + _F(5.0) * q * q  # lower towards the back of the head
    alpha = _cover(np.maximum(_ellipse_sd(lx, ly, rx, ry), ly - lower_edge), frame.px)
    canvas.paint(sl, alpha, _hair_texture(lx, ly, ident, hair))


@dataclass
class _FaceOutline:
    """The face outline: an ellipse whose lower half tapers to the jaw, in its own frame.

    Under yaw/pitch the whole outline slides a little (it is mostly a silhouette) and its lower half
    slides further (the jaw and chin stand out like the features do), so that the mouth and nose
    stay inside it even in strong profile views.
    """

    frame: _Frame
    vc: float  # v of the outline's centre
    hh: float  # half-height
    hw: float  # half-width at cheek level
    jaw_taper: float
    shear_x: float  # extra horizontal shift of the chin, local units
    shear_y: float  # extra vertical shift of the chin, local units

    def unshear(self, lx: np.ndarray, ly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local coordinates with the chin's extra pose shift undone (for shapes drawn on the jaw)."""
        t = np.clip(ly / _F(self.hh), 0.0, 1.0)
        t2 = t * t
        return lx - _F(self.shear_x) * t2, ly - _F(self.shear_y) * t2

    def sd(self, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
        lx, ly = self.unshear(lx, ly)
        t = np.clip(ly / _F(self.hh), 0.0, 1.0)
        half_w = _F(self.hw) * (1.0 - _F(self.jaw_taper) * t * t)
        return _ellipse_sd(lx / half_w * _F(self.hw), ly, self.hw, self.hh)

    def region(self, top: float, bottom: float, size: int):
        """Pixels of the outline's box between local ``top`` and ``bottom`` (see :meth:`_Frame.region`)."""
        x0 = -self.hw - 1 + min(0.0, self.shear_x)
        x1 = self.hw + 1 + max(0.0, self.shear_x)
        return self.frame.region(x0, x1, top + min(0.0, self.shear_y), bottom + max(0.0, self.shear_y), size)


def _face_outline(pose: _Pose, ident: IdentityParams) -> _FaceOutline:
    vc = (ident.face_top + ident.chin_v) / 2
    hh = (ident.chin_v - ident.face_top) / 2
    fx = 0.8 + 0.2 * math.cos(pose.yaw)
    fy = 0.85 + 0.15 * math.cos(pose.pitch)
    frame = pose.frame(0.0, vc, 12.0, fx=fx, fy=fy)
    return _FaceOutline(
        frame=frame,
        vc=vc,
        hh=hh,
        hw=ident.face_hw,
        jaw_taper=ident.jaw_taper,
        shear_x=24.0 * math.sin(pose.yaw) / fx,
        shear_y=-15.0 * math.sin(pose.pitch) / fy,
    )


def _paint_face(canvas: _Canvas, pose: _Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    outline = _face_outline(pose, ident)
    reg = outline.region(-outline.hh - 1, outline.hh + 1, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    alpha = _cover(outline.sd(lx, ly), outline.frame.px)
    skin = np.array(ident.skin, dtype=_F)
    # Cheek blush (a fixed place in the outline's frame).
    v = ly + _F(outline.vc)
    blush = _F(ident.blush) * (
        _gauss(lx - _F(ident.eye_dx), v - _F(ident.nose_v), 7.0, 5.0)
        + _gauss(lx + _F(ident.eye_dx), v - _F(ident.nose_v), 7.0, 5.0)
    )
    colour = skin + blush[..., None] * (np.array([0.8, 0.35, 0.35], dtype=_F) - skin)
    canvas.paint(sl, alpha, colour.astype(_F))


def _paint_forehead_hair(canvas: _Canvas, pose: _Pose, ident: IdentityParams, hair: np.ndarray) -> None:
    """Hair over the face outline above the hairline (curving down at the temples) or a fringe."""
    outline = _face_outline(pose, ident)
    frame, vc, hw = outline.frame, outline.vc, outline.hw
    reg = outline.region(-outline.hh - 1, ident.eye_v - vc, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    inside = _cover(outline.sd(lx, ly), frame.px)
    q = lx / _F(hw)
    if ident.fringe_v is not None:
        line = _F(ident.fringe_v - vc) + _F(ident.fringe_amp) * np.sin(
            _F(ident.fringe_freq) * lx + _F(ident.fringe_phase)
        )
        line = line + _F(ident.temple_drop) * q * q
    else:
        line = _F(ident.hairline_v - vc) + _F(ident.temple_drop) * q * q
    if ident.hair_style != "bald":  # sideburns down to the ear top
        side = np.clip((np.abs(q) - 0.82) / 0.1, 0.0, 1.0)
        line = line + side * _F(ident.eye_v - ident.hairline_v)
    alpha = inside * _cover(ly - line, frame.px)
    canvas.paint(sl, alpha, _hair_texture(lx, ly, ident, hair))


def _paint_ears(canvas: _Canvas, pose: _Pose, ident: IdentityParams, front: bool) -> None:
    """Ears on the head's sides; ``front`` draws those turned towards the camera (over the face)."""
    if ident.hair_style in ("medium", "long"):
        return
    for side in (-1.0, 1.0):
        u = side * (ident.face_hw + 1.0)
        z_after = pose.depth_after(u, -2.0)
        if z_after < -14.0 or (z_after > 12.0) != front:
            continue
        frame = pose.frame(u, ident.eye_v + ident.ear_dv, -2.0, fx=1.0)
        skin = np.array(ident.skin)
        _draw_ellipse(canvas, frame, ident.ear_rx, ident.ear_ry, _colour(skin * 0.93))
        inner = pose.frame(u - side * 0.8, ident.eye_v + ident.ear_dv + 0.5, -2.0, fx=1.0)
        _soft_shadow(canvas, inner, ident.ear_rx * 0.35, ident.ear_ry * 0.45, 0.25)


def _paint_age_lines(canvas: _Canvas, pose: _Pose, ident: IdentityParams, age: float) -> None:
    """Forehead lines and nasolabial folds, stronger with age."""
    strength = float(np.clip((age - 35.0) / 40.0, 0.0, 1.0)) * 0.22
    if strength <= 0:
        return
    for k in range(3):
        v = ident.eye_v - ident.brow_gap - 7.0 - 3.2 * k
        frame = pose.frame(0.0, v, _surface_z(0.0, v))
        reg = frame.region(-17.0, 17.0, -3.0, 3.0, canvas.size)
        if reg is not None:
            sl, lx, ly = reg
            curve = _F(0.012) * lx * lx
            canvas.darken(sl, _F(strength) * _gauss(ly - curve, lx, 0.45, 12.0))
    for side in (-1.0, 1.0):
        u, v = side * (ident.nose_hw + 4.0), (ident.nose_v + ident.mouth_v) / 2
        frame = pose.frame(u, v, _surface_z(u, v), angle=-side * 22.0)
        reg = frame.region(-3.0, 3.0, -12.0, 12.0, canvas.size)
        if reg is not None:
            sl, lx, ly = reg
            canvas.darken(sl, _F(strength * 1.3) * _gauss(lx - _F(0.02) * ly * ly * side, ly, 0.55, 8.0))


def _paint_moles(canvas: _Canvas, pose: _Pose, ident: IdentityParams) -> None:
    for u, v, r in ident.moles:
        inside = (u / ident.face_hw) ** 2 + ((v - 2.0) / 46.0) ** 2 < 0.8
        near_eye = abs(abs(u) - ident.eye_dx) < 8 and abs(v - ident.eye_v) < 5
        if inside and not near_eye and v > ident.hairline_v + 5:
            frame = pose.frame(u, v, _surface_z(u, v))
            _draw_ellipse(canvas, frame, r, r, _colour(np.array(ident.skin) * 0.45))


def _eye_lids(lx: np.ndarray, ident: IdentityParams, openness: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower lid curves of the eye opening (almond shape)."""
    q = np.clip(1.0 - (lx / _F(ident.eye_hw)) ** 2, 0.0, 1.0)
    top = -_F(ident.eye_hh * 1.15 * openness) * q**0.75
    bottom = _F(ident.eye_hh * 0.85 * (0.4 + 0.6 * openness)) * q**0.9
    return top, bottom


def _eye_frame(pose: _Pose, ident: IdentityParams, side: float) -> tuple[_Frame, tuple[float, float, float]]:
    """Frame of the eye on ``side`` (-1 image-left, +1 image-right), centred on the eye centre."""
    u, v = side * ident.eye_dx, ident.eye_v + (ident.eye_asym if side > 0 else 0.0)
    z = _surface_z(u, v) - 2.0
    return pose.frame(u, v, z, angle=-side * ident.eye_tilt), (u, v, z)


def _paint_eyes(canvas: _Canvas, pose: _Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    """Sockets, sclera, iris, pupil, lash line, lid crease."""
    for side in (-1.0, 1.0):  # -1 = image-left eye (the template's first point)
        frame, (u, v, z) = _eye_frame(pose, ident, side)
        socket = pose.frame(u, v - 1.5, z - 1.0)
        _soft_shadow(canvas, socket, ident.eye_hw * 1.1, ident.eye_hh * 1.6, 0.16)
        hw = ident.eye_hw
        reg = frame.region(-hw - 1, hw + 1, -ident.eye_hh * 1.6 - 4.0, ident.eye_hh + 2, canvas.size)
        if reg is None:
            continue
        sl, lx, ly = reg
        top, bottom = _eye_lids(lx, ident, nz.eye_open)
        opening = _band(ly, top, bottom, frame.px) * _cover(np.abs(lx) - _F(hw), frame.px)
        canvas.paint(sl, opening, (0.92, 0.89, 0.86))
        gx, gy = nz.gaze
        iris_d = np.sqrt((lx - _F(gx)) ** 2 + (ly - _F(gy)) ** 2)
        canvas.paint(sl, opening * _cover(iris_d - _F(ident.iris_r), frame.px), ident.iris)
        canvas.paint(sl, opening * _cover(iris_d - _F(ident.iris_r * 0.42), frame.px), (0.03, 0.03, 0.03))
        lash = _band(ly, top - _F(0.9), top + _F(0.25), frame.px) * _cover(
            np.abs(lx) - _F(hw + 0.6), frame.px
        )
        canvas.paint(sl, lash * _F(0.85), (0.07, 0.05, 0.05))
        crease = _gauss(lx, ly - (top * _F(1.1) - _F(2.2)), hw * 0.75, 0.5)
        canvas.darken(sl, _F(0.18) * crease)


def _paint_brows(canvas: _Canvas, pose: _Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    for side in (-1.0, 1.0):
        u = side * (ident.eye_dx + 0.5)
        v = ident.eye_v - ident.brow_gap - nz.brow_raise
        frame = pose.frame(u, v, _surface_z(u, v) + 1.5, angle=-side * ident.brow_tilt)
        hl = ident.brow_hl
        reg = frame.region(
            -hl - 1, hl + 1, -ident.brow_arch - ident.brow_th - 1, ident.brow_th + 1, canvas.size
        )
        if reg is None:
            continue
        sl, lx, ly = reg
        q = lx / _F(hl)
        centre = -_F(ident.brow_arch) * (1.0 - q * q)
        inner = np.clip(0.5 - 0.5 * q * _F(side), 0.0, 1.0)  # 1 at the end nearest the nose
        half = _F(ident.brow_th / 2) * (0.55 + 0.6 * inner)
        alpha = _band(ly, centre - half, centre + half, frame.px) * _cover(np.abs(lx) - _F(hl), frame.px)
        canvas.paint(sl, alpha * _F(0.92), ident.brow)


def _nose_tip_z(ident: IdentityParams) -> float:
    return _surface_z(0.0, ident.nose_v) + ident.nose_depth


def _paint_nose(canvas: _Canvas, pose: _Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    """Side shadow, tip highlight, wings, nostrils."""
    tip_z = _nose_tip_z(ident)
    light_side = math.sin(math.radians(nz.light_az))
    bridge_len = ident.nose_v - ident.eye_v
    bridge = pose.frame(
        -0.7 * ident.nose_hw * np.sign(light_side + 1e-9), ident.nose_v - bridge_len / 2, tip_z - 6.0
    )
    _soft_shadow(canvas, bridge, ident.nose_hw * 0.35, bridge_len * 0.45, 0.10 + 0.18 * abs(light_side))
    under = pose.frame(0.0, ident.nose_v + 3.5, tip_z - 8.0)
    _soft_shadow(canvas, under, ident.nose_hw * 0.9, 1.8, 0.22)
    for side in (-1.0, 1.0):
        wing = pose.frame(side * ident.nose_hw * 0.75, ident.nose_v - 0.5, tip_z - 6.0)
        _soft_shadow(canvas, wing, ident.nose_hw * 0.3, 2.2, 0.14)
        nostril = pose.frame(side * ident.nose_hw * 0.42, ident.nose_v + 1.6, tip_z - 4.0, angle=side * 15.0)
        ry = ident.nostril_r * 0.6 * (1.0 + 1.5 * max(0.0, math.sin(pose.pitch)))
        _draw_ellipse(canvas, nostril, ident.nostril_r * 1.2, ry, _colour(np.array(ident.skin) * 0.3))
    highlight = pose.frame(0.0, ident.nose_v - 2.0, tip_z)
    reg = highlight.region(-6.0, 6.0, -6.0, 6.0, canvas.size)
    if reg is not None:
        sl, lx, ly = reg
        canvas.paint(sl, _F(0.18) * _gauss(lx, ly, ident.nose_hw * 0.35, 2.0), (1.0, 0.95, 0.9))


def _mouth_line(lx: np.ndarray, hw: float, smile: float) -> np.ndarray:
    q = lx / _F(hw)
    return -_F(2.6 * smile) * q * q


def _mouth_frame(pose: _Pose, ident: IdentityParams, nz: NuisanceParams) -> tuple[_Frame, float]:
    """Frame centred on the mouth (corners at local ``(+-hw, -2.6 * smile)``) and its half-width."""
    frame = pose.frame(0.0, ident.mouth_v, _surface_z(0.0, ident.mouth_v) + 2.0)
    return frame, ident.mouth_hw * (1.0 + 0.08 * nz.smile)


def _paint_mouth(canvas: _Canvas, pose: _Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    """Lips, opened by ``mouth_open`` and curved by ``smile``."""
    frame, hw = _mouth_frame(pose, ident, nz)
    gap = nz.mouth_open * 4.0
    reg = frame.region(-hw - 1, hw + 1, -ident.lip_up - 5.0, ident.lip_lo + gap + 3.0, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    q = np.clip(1.0 - (lx / _F(hw)) ** 2, 0.0, 1.0)
    line = _mouth_line(lx, hw, nz.smile)
    bow = _F(0.6) * np.exp(-((lx / _F(2.0)) ** 2))  # cupid's bow dip
    width = _cover(np.abs(lx) - _F(hw), frame.px)
    opening = gap * q**0.6
    upper = _band(ly, line - _F(ident.lip_up) * q**0.5 + bow, line - opening / 2, frame.px)
    lower = _band(ly, line + opening / 2, line + opening / 2 + _F(ident.lip_lo) * q**0.6, frame.px)
    if gap > 0.3:
        inside = _band(ly, line - opening / 2, line + opening / 2, frame.px) * width
        canvas.paint(sl, inside, (0.18, 0.05, 0.06))
        teeth = _band(ly, line - opening / 2, line - opening / 2 + _F(min(2.0, gap * 0.45)), frame.px)
        canvas.paint(sl, inside * teeth, (0.85, 0.83, 0.78))
    canvas.paint(sl, np.maximum(upper, lower) * width, ident.lip)
    canvas.darken(sl, _F(0.35) * width * np.exp(_F(-0.5 / 0.55**2) * (ly - line) ** 2))


def _paint_beard(
    canvas: _Canvas, pose: _Pose, ident: IdentityParams, hair: np.ndarray, moustache: bool
) -> None:
    """Facial hair: stubble / goatee / full beard under the mouth, moustache (drawn after the lips)."""
    if ident.beard == "none":
        return
    colour = (hair * 0.9).astype(_F)
    if moustache:
        if ident.beard in ("moustache", "goatee", "full"):
            v = ident.mouth_v - ident.lip_up - 2.0
            frame = pose.frame(0.0, v, _surface_z(0.0, v) + 3.0)
            hw = ident.mouth_hw + 1.5
            reg = frame.region(-hw - 1, hw + 1, -4.0, 6.0, canvas.size)
            if reg is not None:
                sl, lx, ly = reg
                q = lx / _F(hw)
                alpha = _band(ly, _F(-2.2), _F(1.3) + _F(2.5) * q * q, frame.px) * _cover(
                    np.abs(lx) - _F(hw), frame.px
                )
                canvas.paint(sl, alpha * _F(ident.beard_density), colour)
        return
    if ident.beard == "moustache":
        return
    outline = _face_outline(pose, ident)
    frame, vc, hw = outline.frame, outline.vc, outline.hw
    top = ident.nose_v + 5.0 - vc
    reg = outline.region(top - 10.0, outline.hh + 1, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    inside = _cover(outline.sd(lx, ly), frame.px)
    lx, ly = outline.unshear(lx, ly)
    q = np.abs(lx) / _F(hw)
    if ident.beard == "goatee":
        region = _cover(
            np.maximum(ident.mouth_v - vc + ident.lip_lo - ly, np.abs(lx) - _F(ident.mouth_hw * 0.8)),
            frame.px,
        )
        density = ident.beard_density
    else:
        line = _F(top) + _F(10.0) * (1.0 - q) - _F(8.0) * q * q
        region = _cover(line - ly, frame.px)
        density = ident.beard_density * (0.35 if ident.beard == "stubble" else 1.0)
    canvas.paint(sl, inside * region * _F(density), colour)


def _paint_glasses(canvas: _Canvas, pose: _Pose, ident: IdentityParams, glasses: Glasses) -> None:
    hw = ident.eye_hw + 3.5
    hh = glasses.lens_hh
    for side in (-1.0, 1.0):
        u, v = side * ident.eye_dx, ident.eye_v + 0.5
        frame = pose.frame(u, v, _surface_z(u, v) + 6.0)
        reg = frame.region(-hw - 8, hw + 8, -hh - 2, hh + 2, canvas.size)
        if reg is None:
            continue
        sl, lx, ly = reg
        if glasses.round_frames:
            sd = _ellipse_sd(lx, ly, hw, hh)
        else:  # rounded rectangle
            qx, qy = np.maximum(np.abs(lx) - _F(hw - 2.0), 0.0), np.maximum(np.abs(ly) - _F(hh - 2.0), 0.0)
            sd = np.sqrt(qx * qx + qy * qy) - _F(2.0)
        lens = _cover(sd, frame.px)
        if glasses.tint > 0:
            canvas.paint(sl, lens * _F(glasses.tint), (0.05, 0.06, 0.07))
        rim = _cover(np.abs(sd) - _F(glasses.thickness / 2), frame.px)
        # Bridge towards the nose and the temple arm towards the ear.
        bar_y = np.abs(ly + _F(hh * 0.4)) - _F(glasses.thickness / 2)
        bridge = _cover(
            np.maximum(bar_y, np.maximum(-side * lx - _F(hw + 8.0), side * lx + _F(hw - 0.5))), frame.px
        )
        arm = _cover(
            np.maximum(bar_y, np.maximum(side * lx - _F(hw + 8.0), -side * lx + _F(hw - 0.5))), frame.px
        )
        bridge = bridge * _cover(-side * lx - _F(ident.eye_dx), frame.px)  # stop at the midline
        canvas.paint(sl, np.maximum(rim, np.maximum(bridge, arm)), glasses.colour)


def _paint_hat(canvas: _Canvas, pose: _Pose, ident: IdentityParams, hat: Hat) -> None:
    rx = ident.face_hw + 4.0 + 0.5 * ident.hair_volume
    frame = pose.frame(0.0, -6.0, 0.0, fx=1.0, fy=1.0)
    reg = frame.region(-rx - 12, rx + 12, -64.0, hat.brim_v + 6.0, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    crown = _cover(np.maximum(_ellipse_sd(lx, ly, rx, 56.0), ly - _F(hat.brim_v + 6.0)), frame.px)
    shade = (1.0 - _F(0.12) * np.clip((ly - _F(hat.brim_v)) / 6.0, 0.0, 1.0))[..., None]
    canvas.paint(sl, crown, (shade * np.array(hat.colour, dtype=_F)).astype(_F))
    brim = pose.frame(0.0, hat.brim_v + 6.0, 30.0, fx=1.0)
    _draw_ellipse(canvas, brim, rx + 3.0, 2.2, _colour(np.array(hat.colour) * 0.8))


def _shade(canvas: _Canvas, pose: _Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    """Lambert + a little specular on a head-shaped ellipsoid, applied to everything in front."""
    frame = pose.frame(0.0, -4.0, 0.0, fx=1.0, fy=1.0)
    rx, ry = ident.face_hw + 6.0, 58.0
    size = canvas.size
    reg = frame.region(-1e4, 1e4, -1e4, 1e4, size)  # whole image
    if reg is None:
        return
    sl, lx, ly = reg
    nx, ny = lx / _F(rx), ly / _F(ry)
    r2 = nx * nx + ny * ny
    scale = np.where(r2 > 1.0, 1.0 / np.sqrt(np.maximum(r2, 1e-6)), 1.0).astype(_F)
    nx, ny = nx * scale, ny * scale
    nzz = np.sqrt(np.maximum(0.0, 1.0 - nx * nx - ny * ny))
    az, el = math.radians(nz.light_az), math.radians(nz.light_el)
    # Light direction in the camera frame, then into the frame's (rolled) axes.
    r = _rot(nz.roll)
    lx0, ly0 = math.sin(az) * math.cos(el), -math.sin(el)
    light = np.array([r[0] * lx0 + r[1] * ly0, r[2] * lx0 + r[3] * ly0, math.cos(az) * math.cos(el)])
    lambert = np.maximum(_F(light[0]) * nx + _F(light[1]) * ny + _F(light[2]) * nzz, 0.0)
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    spec = np.maximum(_F(half[0]) * nx + _F(half[1]) * ny + _F(half[2]) * nzz, 0.0)
    spec *= spec
    spec4 = spec * spec
    spec = spec4 * spec4 * spec  # ** 10, by squaring (float pow is slow)
    amb = nz.ambient
    norm = amb + (1.0 - amb) * max(light[2], 0.35)
    shade = (_F(amb) + _F(1.0 - amb) * lambert) / _F(norm) + _F(0.08) * spec
    fg = canvas.fg[sl]
    canvas.rgb[sl] *= (1.0 + fg * (shade - 1.0))[..., None]


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """A fixed 256x256x3 standard-normal table; images take shifted, sign-flipped windows of it."""
    table = np.random.default_rng(0x5E_2503).standard_normal((256, 256, 3), dtype=np.float32)
    table.flags.writeable = False
    return table


def _sensor_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Per-image gaussian noise: a window of the fixed table at a seed-chosen offset (much cheaper
    than drawing fresh normals, and still a pure function of the seed)."""
    table = _noise_table()
    rng = np.random.default_rng(seed)
    h, w = shape[0], shape[1]
    rows = (np.arange(h) + int(rng.integers(0, 256))) % 256
    cols = (np.arange(w) + int(rng.integers(0, 256))) % 256
    window = table[rows[:, None], cols[None, :]]
    if rng.random() < 0.5:
        window = window[::-1]
    return window if rng.random() < 0.5 else -window


def _finish(image: np.ndarray, nz: NuisanceParams, supersample: int) -> np.ndarray:
    """Downsample, light colour, exposure/contrast, blur, noise, quantise."""
    if supersample > 1:
        n = image.shape[0] // supersample
        image = image.reshape(n, supersample, n, supersample, 3).mean(axis=(1, 3))
    gain = np.array(nz.light_colour, dtype=_F) * _F(nz.exposure)
    pivot = float(image.mean()) * float(gain.mean())
    # Colour, exposure and contrast about the mean in one affine step, straight to 0..255.
    image = image * (gain * _F(255.0 * nz.contrast)) + _F(255.0 * pivot * (1.0 - nz.contrast))
    if nz.blur_sigma > 0.2:
        image = gaussian_filter(
            image, sigma=(nz.blur_sigma, nz.blur_sigma, 0.0), mode="nearest", truncate=3.0
        )
    if nz.noise_sigma > 0:
        image += _F(255.0 * nz.noise_sigma) * _sensor_noise(image.shape, nz.noise_seed)
    np.clip(image, 0.0, 255.0, out=image)
    image += _F(0.5)
    return image.astype(np.uint8)


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
    canvas = _Canvas(size)
    pose = _Pose(nz, image_size, supersample)
    hair = _hair_colour(ident, nz.age)

    _paint_background(canvas, nz)
    canvas.fg[:] = 0.0
    _paint_back_hair(canvas, pose, ident, hair)
    _paint_neck(canvas, pose, ident)
    _paint_skull_hair(canvas, pose, ident, hair)
    _paint_ears(canvas, pose, ident, front=False)
    _paint_face(canvas, pose, ident, nz)
    _paint_ears(canvas, pose, ident, front=True)
    _paint_age_lines(canvas, pose, ident, nz.age)
    _paint_moles(canvas, pose, ident)
    _paint_beard(canvas, pose, ident, hair, moustache=False)
    _paint_eyes(canvas, pose, ident, nz)
    _paint_brows(canvas, pose, ident, nz)
    _paint_nose(canvas, pose, ident, nz)
    _paint_mouth(canvas, pose, ident, nz)
    _paint_beard(canvas, pose, ident, hair, moustache=True)
    _paint_forehead_hair(canvas, pose, ident, hair)
    if nz.glasses is not None:
        _paint_glasses(canvas, pose, ident, nz.glasses)
    if nz.hat is not None:
        _paint_hat(canvas, pose, ident, nz.hat)
    _shade(canvas, pose, ident, nz)

    image = _finish(canvas.rgb, nz, supersample)
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
    pose = _Pose(nz, image_size, 1)
    frame, hw = _mouth_frame(pose, ident, nz)
    corner_y = -2.6 * nz.smile
    points = [
        _eye_frame(pose, ident, -1.0)[0].to_image(0.0, 0.0),
        _eye_frame(pose, ident, 1.0)[0].to_image(0.0, 0.0),
        pose.frame(0.0, ident.nose_v, _nose_tip_z(ident)).to_image(0.0, 0.0),
        frame.to_image(-hw, corner_y),
        frame.to_image(hw, corner_y),
    ]
    return np.array(points, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Difficulty check: how far raw pixels get
# ----------------------------------------------------------------------------------------------


def best_threshold_accuracy(scores: np.ndarray, genuine: np.ndarray) -> float:
    """Verification accuracy at the best single threshold (``score >= t`` means "same identity")."""
    scores = np.asarray(scores, dtype=np.float64)
    genuine = np.asarray(genuine, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    g = genuine[order]
    accepted_genuine = np.concatenate([[0], np.cumsum(g)])
    accepted_impostor = np.concatenate([[0], np.cumsum(~g)])
    # Only cut between distinct scores (ties are accepted or rejected together).
    s = scores[order]
    cuts = np.concatenate([[True], s[1:] != s[:-1], [True]])
    correct = accepted_genuine + (np.count_nonzero(~g) - accepted_impostor)
    return float(correct[cuts].max() / len(g))


def verification_pairs(num_identities: int, images_per_identity: int, seed: int = 0) -> np.ndarray:
    """Balanced pairs ``(identity_a, image_a, identity_b, image_b, genuine)``: each identity's images
    paired off (0-1, 2-3, ...) as genuine pairs and as many impostor pairs between random identities."""
    if num_identities < 2 or images_per_identity < 2:
        raise ValueError("need at least 2 identities with at least 2 images each")
    rng = np.random.default_rng(seed)
    genuine = [
        (k, i, k, i + 1, 1) for k in range(num_identities) for i in range(0, images_per_identity - 1, 2)
    ]
    n = len(genuine)
    a = rng.integers(0, num_identities, n)
    b = (a + rng.integers(1, num_identities, n)) % num_identities
    ia, ib = rng.integers(0, images_per_identity, n), rng.integers(0, images_per_identity, n)
    impostor = [(int(a[j]), int(ia[j]), int(b[j]), int(ib[j]), 0) for j in range(n)]
    return np.array(genuine + impostor, dtype=np.int64)


def raw_pixel_features(images: np.ndarray, side: int = 32) -> np.ndarray:
    """The naive verifier's features: grey, resized to ``side`` x ``side``, mean-removed, unit norm."""
    from PIL import Image

    feats = np.empty((len(images), side * side), dtype=np.float64)
    for i, image in enumerate(images):
        grey = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L")
        feats[i] = np.asarray(grey.resize((side, side), Image.BILINEAR), dtype=np.float64).reshape(-1)
    feats -= feats.mean(axis=1, keepdims=True)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    return feats


def raw_pixel_verification(
    generator: ParametricRenderer,
    labels: Sequence[int],
    images_per_identity: int = 4,
    pair_seed: int = 0,
) -> dict[str, float]:
    """Best-threshold accuracy of a raw-pixel cosine verifier on fresh identities of ``generator``.

    Images of label ``l`` are requests ``(l, i, sample_seed(generator.seed, l, i))``. A renderer whose
    nuisance is too weak lets this verifier approach 100%; one without identity signal leaves it at 50%.
    """
    from facesynth.generators.registry import sample_seed

    labels = [int(label) for label in labels]
    requests = [
        SampleRequest(label, i, sample_seed(generator.seed, label, i))
        for label in labels
        for i in range(images_per_identity)
    ]
    images = np.stack([face.image for face in generator.generate(requests)])
    feats = raw_pixel_features(images).reshape(len(labels), images_per_identity, -1)
    pairs = verification_pairs(len(labels), images_per_identity, pair_seed)
    scores = np.einsum("nd,nd->n", feats[pairs[:, 0], pairs[:, 1]], feats[pairs[:, 2], pairs[:, 3]])
    genuine = pairs[:, 4].astype(bool)
    return {
        "accuracy": best_threshold_accuracy(scores, genuine),
        "genuine_mean_cos": float(scores[genuine].mean()),
        "impostor_mean_cos": float(scores[~genuine].mean()),
        "pairs": float(len(pairs)),
    }


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
