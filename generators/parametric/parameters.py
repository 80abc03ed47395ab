"""Parametric faces, part 1: the identity and nuisance parameters and their seeded sampling.

See :mod:`facesynth.generators.parametric.renderer` for the model as a whole; the spreads below are
this module's own calibration (not DigiFace-1M's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from facesynth.recognizers.alignment import ARCFACE_TEMPLATE

#: ArcFace 112x112 five-point template (the one alignment warps real faces onto).
ARCFACE_TEMPLATE_112 = ARCFACE_TEMPLATE
#: Head-frame origin in 112x112 template pixels. Head-frame units are template pixels at 112x112.
HEAD_CENTRE_112 = (56.0, 62.0)

#: Hard limits of the rendered pose (degrees) and age (years), whatever the difficulty. Not the same
#: thing as :data:`facesynth.generators.attributes.ATTRIBUTE_RANGES` (the ID3 condition's scaling).
POSE_AGE_LIMITS = {"yaw": (-60.0, 60.0), "pitch": (-30.0, 30.0), "roll": (-25.0, 25.0), "age": (10.0, 90.0)}

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
GREY_HAIR = np.array([0.78, 0.77, 0.75])
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


def as_colour(values: Any) -> _Colour:
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
        skin=as_colour(skin),
        lip=as_colour(lip),
        hair=as_colour(hair),
        brow=as_colour(brow),
        iris=as_colour(iris),
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
    lo, hi = POSE_AGE_LIMITS["yaw"]
    yaw = float(np.clip(n(0.0, 22.0 * d), lo, hi))
    lo, hi = POSE_AGE_LIMITS["pitch"]
    pitch = float(np.clip(n(0.0, 10.0 * d), lo, hi))
    lo, hi = POSE_AGE_LIMITS["roll"]
    roll = float(np.clip(n(0.0, 7.0 * d), lo, hi))
    lo, hi = POSE_AGE_LIMITS["age"]
    age = float(np.clip(identity.base_age + n(0.0, 4.0 * d), lo, hi))

    glasses = None
    if u() < 0.22 * min(d, 1.5):
        sun = u() < 0.25
        glasses = Glasses(
            round_frames=bool(u() < 0.4),
            colour=as_colour(u(0.0, 0.45, size=3) if u() < 0.7 else u(0.3, 0.9, size=3)),
            thickness=u(0.8, 2.0),
            tint=u(0.55, 0.85) if sun else u(0.0, 0.12),
            lens_hh=u(4.5, 7.0),
        )
    hat = None
    if u() < 0.12 * min(d, 1.5):
        hat = Hat(colour=as_colour(u(0.05, 0.9, size=3)), brim_v=u(-38.0, -26.0))

    grey = 0.55 + min(d, 1.0) * u(-0.3, 0.25)
    bg_a = np.clip(grey + d * u(-0.45, 0.45, size=3), 0.0, 1.0)
    bg_b = np.clip(bg_a + d * u(-0.35, 0.35, size=3), 0.0, 1.0)
    n_blobs = int(rng.integers(0, 4)) if d > 0 else 0
    blobs = tuple(
        (u(0.0, 1.0), u(0.0, 1.0), u(0.08, 0.35), as_colour(u(0.0, 1.0, size=3)), u(0.3, 0.9) * min(d, 1.0))
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
        light_colour=as_colour(
            1.0 + d * np.array([1.0, 0.0, -1.0]) * n(0.0, 0.07) + d * n(0.0, 0.025, size=3)
        ),
        exposure=float(np.exp(n(0.0, 0.16 * d))),
        contrast=float(np.exp(n(0.0, 0.12 * d))),
        smile=float(np.clip(n(0.25, 0.45 * d), -0.4, 1.2)) if d > 0 else 0.0,
        mouth_open=float(max(0.0, n(-0.4, 0.7 * d))) if d > 0 else 0.0,
        eye_open=float(np.clip(1.0 - abs(n(0.0, 0.18 * d)), 0.25, 1.0)),
        brow_raise=float(n(0.0, 1.3 * d)),
        gaze=(float(n(0.0, 0.9 * d)), float(n(0.0, 0.5 * d))),
        glasses=glasses,
        hat=hat,
        bg_colours=(as_colour(bg_a), as_colour(bg_b)),
        bg_angle=u(0.0, 2 * math.pi),
        bg_blobs=blobs,
        blur_sigma=float(u(0.0, 1.1 * d)),
        noise_sigma=float(u(0.0, 0.028 * d)),
        noise_seed=int(rng.integers(0, 2**63 - 1)),
    )
