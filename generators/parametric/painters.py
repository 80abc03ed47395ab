"""Parametric faces, part 3: the painters, one per face part, drawn back to front, and the finish."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from facesynth.generators.parametric.geometry import (
    Canvas,
    Frame,
    Pose,
    band,
    cover,
    draw_ellipse,
    ellipse_sd,
    gauss,
    rot,
    soft_shadow,
    surface_z,
)
from facesynth.generators.parametric.parameters import (
    GREY_HAIR,
    Glasses,
    Hat,
    IdentityParams,
    NuisanceParams,
    as_colour,
)

_F = np.float32


# ----------------------------------------------------------------------------------------------
# Face parts (drawn back to front)
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(size, dtype=_F) + 0.5) / _F(size)
    return t[None, :], t[:, None]


def paint_background(canvas: Canvas, nz: NuisanceParams) -> None:
    gx, gy = _unit_grid(canvas.size)
    a, b = (np.array(c, dtype=_F) for c in nz.bg_colours)
    t = _F(math.cos(nz.bg_angle)) * (gx - 0.5) + _F(math.sin(nz.bg_angle)) * (gy - 0.5)
    canvas.rgb[:] = a + (t[..., None] + 0.5) * (b - a)
    for bx, by, r, colour, strength in nz.bg_blobs:  # gaussian blobs, separable in x and y
        k = _F(-0.5 / (r * r))
        w = (_F(strength) * np.exp(k * (gx - _F(bx)) ** 2)) * np.exp(k * (gy - _F(by)) ** 2)
        canvas.rgb += w[..., None] * (np.array(colour, dtype=_F) - canvas.rgb)


def hair_colour(ident: IdentityParams, age: float) -> np.ndarray:
    grey = np.clip((age - 72.0 + 32.0 * ident.greying) / 25.0, 0.0, 0.9)  # starts at 40..72 years
    return np.array(ident.hair) + grey * (GREY_HAIR - np.array(ident.hair))


def _hair_texture(lx: np.ndarray, ly: np.ndarray, ident: IdentityParams, colour: np.ndarray) -> np.ndarray:
    """Hair colour with identity-specific streaks (a fixed pattern in the head frame)."""
    ca, sa = math.cos(ident.streak_angle), math.sin(ident.streak_angle)
    phase = _F(ident.streak_freq) * (_F(ca) * lx + _F(sa) * ly)
    shade = _F(1.0) + _F(0.12) * np.sin(phase)
    return shade[..., None] * colour.astype(_F)


def paint_back_hair(canvas: Canvas, pose: Pose, ident: IdentityParams, hair: np.ndarray) -> None:
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
    alpha = cover(np.maximum(np.abs(lx) - width, np.maximum(-10.0 - ly, ly - bottom)), frame.px)
    canvas.paint(sl, alpha, _hair_texture(lx, ly, ident, hair))


def paint_neck(canvas: Canvas, pose: Pose, ident: IdentityParams) -> None:
    frame = pose.frame(0.0, ident.chin_v, -6.0, fx=1.0, fy=1.0)
    hw = ident.neck_hw
    reg = frame.region(-hw - 12, hw + 12, -25.0, 90.0, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    width = hw + np.maximum(ly - 20.0, 0.0) * 0.6  # flares into the shoulders
    alpha = cover(np.maximum(np.abs(lx) - width, -25.0 - ly), frame.px)
    shadow = 0.55 + 0.25 * np.clip((ly + 5.0) / 30.0, 0.0, 1.0)  # darkest right under the jaw
    colour = (shadow[..., None] * np.array(ident.skin, dtype=_F)).astype(_F)
    canvas.paint(sl, alpha, colour)


def paint_skull_hair(canvas: Canvas, pose: Pose, ident: IdentityParams, hair: np.ndarray) -> None:
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
    alpha = cover(np.maximum(ellipse_sd(lx, ly, rx, ry), ly - lower_edge), frame.px)
    canvas.paint(sl, alpha, _hair_texture(lx, ly, ident, hair))


@dataclass
class _FaceOutline:
    """The face outline: an ellipse whose lower half tapers to the jaw, in its own frame.

    Under yaw/pitch the whole outline slides a little (it is mostly a silhouette) and its lower half
    slides further (the jaw and chin stand out like the features do), so that the mouth and nose
    stay inside it even in strong profile views.
    """

    frame: Frame
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
        return ellipse_sd(lx / half_w * _F(self.hw), ly, self.hw, self.hh)

    def region(self, top: float, bottom: float, size: int):
        """Pixels of the outline's box between local ``top`` and ``bottom`` (see :meth:`Frame.region`)."""
        x0 = -self.hw - 1 + min(0.0, self.shear_x)
        x1 = self.hw + 1 + max(0.0, self.shear_x)
        return self.frame.region(x0, x1, top + min(0.0, self.shear_y), bottom + max(0.0, self.shear_y), size)


def _face_outline(pose: Pose, ident: IdentityParams) -> _FaceOutline:
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


def paint_face(canvas: Canvas, pose: Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    outline = _face_outline(pose, ident)
    reg = outline.region(-outline.hh - 1, outline.hh + 1, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    alpha = cover(outline.sd(lx, ly), outline.frame.px)
    skin = np.array(ident.skin, dtype=_F)
    # Cheek blush (a fixed place in the outline's frame).
    v = ly + _F(outline.vc)
    blush = _F(ident.blush) * (
        gauss(lx - _F(ident.eye_dx), v - _F(ident.nose_v), 7.0, 5.0)
        + gauss(lx + _F(ident.eye_dx), v - _F(ident.nose_v), 7.0, 5.0)
    )
    colour = skin + blush[..., None] * (np.array([0.8, 0.35, 0.35], dtype=_F) - skin)
    canvas.paint(sl, alpha, colour.astype(_F))


def paint_forehead_hair(canvas: Canvas, pose: Pose, ident: IdentityParams, hair: np.ndarray) -> None:
    """Hair over the face outline above the hairline (curving down at the temples) or a fringe."""
    outline = _face_outline(pose, ident)
    frame, vc, hw = outline.frame, outline.vc, outline.hw
    reg = outline.region(-outline.hh - 1, ident.eye_v - vc, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    inside = cover(outline.sd(lx, ly), frame.px)
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
    alpha = inside * cover(ly - line, frame.px)
    canvas.paint(sl, alpha, _hair_texture(lx, ly, ident, hair))


def paint_ears(canvas: Canvas, pose: Pose, ident: IdentityParams, front: bool) -> None:
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
        draw_ellipse(canvas, frame, ident.ear_rx, ident.ear_ry, as_colour(skin * 0.93))
        inner = pose.frame(u - side * 0.8, ident.eye_v + ident.ear_dv + 0.5, -2.0, fx=1.0)
        soft_shadow(canvas, inner, ident.ear_rx * 0.35, ident.ear_ry * 0.45, 0.25)


def paint_age_lines(canvas: Canvas, pose: Pose, ident: IdentityParams, age: float) -> None:
    """Forehead lines and nasolabial folds, stronger with age."""
    strength = float(np.clip((age - 35.0) / 40.0, 0.0, 1.0)) * 0.22
    if strength <= 0:
        return
    for k in range(3):
        v = ident.eye_v - ident.brow_gap - 7.0 - 3.2 * k
        frame = pose.frame(0.0, v, surface_z(0.0, v))
        reg = frame.region(-17.0, 17.0, -3.0, 3.0, canvas.size)
        if reg is not None:
            sl, lx, ly = reg
            curve = _F(0.012) * lx * lx
            canvas.darken(sl, _F(strength) * gauss(ly - curve, lx, 0.45, 12.0))
    for side in (-1.0, 1.0):
        u, v = side * (ident.nose_hw + 4.0), (ident.nose_v + ident.mouth_v) / 2
        frame = pose.frame(u, v, surface_z(u, v), angle=-side * 22.0)
        reg = frame.region(-3.0, 3.0, -12.0, 12.0, canvas.size)
        if reg is not None:
            sl, lx, ly = reg
            canvas.darken(sl, _F(strength * 1.3) * gauss(lx - _F(0.02) * ly * ly * side, ly, 0.55, 8.0))


def paint_moles(canvas: Canvas, pose: Pose, ident: IdentityParams) -> None:
    for u, v, r in ident.moles:
        inside = (u / ident.face_hw) ** 2 + ((v - 2.0) / 46.0) ** 2 < 0.8
        near_eye = abs(abs(u) - ident.eye_dx) < 8 and abs(v - ident.eye_v) < 5
        if inside and not near_eye and v > ident.hairline_v + 5:
            frame = pose.frame(u, v, surface_z(u, v))
            draw_ellipse(canvas, frame, r, r, as_colour(np.array(ident.skin) * 0.45))


def _eye_lids(lx: np.ndarray, ident: IdentityParams, openness: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower lid curves of the eye opening (almond shape)."""
    q = np.clip(1.0 - (lx / _F(ident.eye_hw)) ** 2, 0.0, 1.0)
    top = -_F(ident.eye_hh * 1.15 * openness) * q**0.75
    bottom = _F(ident.eye_hh * 0.85 * (0.4 + 0.6 * openness)) * q**0.9
    return top, bottom


def eye_frame(pose: Pose, ident: IdentityParams, side: float) -> tuple[Frame, tuple[float, float, float]]:
    """Frame of the eye on ``side`` (-1 image-left, +1 image-right), centred on the eye centre."""
    u, v = side * ident.eye_dx, ident.eye_v + (ident.eye_asym if side > 0 else 0.0)
    z = surface_z(u, v) - 2.0
    return pose.frame(u, v, z, angle=-side * ident.eye_tilt), (u, v, z)


def paint_eyes(canvas: Canvas, pose: Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    """Sockets, sclera, iris, pupil, lash line, lid crease."""
    for side in (-1.0, 1.0):  # -1 = image-left eye (the template's first point)
        frame, (u, v, z) = eye_frame(pose, ident, side)
        socket = pose.frame(u, v - 1.5, z - 1.0)
        soft_shadow(canvas, socket, ident.eye_hw * 1.1, ident.eye_hh * 1.6, 0.16)
        hw = ident.eye_hw
        reg = frame.region(-hw - 1, hw + 1, -ident.eye_hh * 1.6 - 4.0, ident.eye_hh + 2, canvas.size)
        if reg is None:
            continue
        sl, lx, ly = reg
        top, bottom = _eye_lids(lx, ident, nz.eye_open)
        opening = band(ly, top, bottom, frame.px) * cover(np.abs(lx) - _F(hw), frame.px)
        canvas.paint(sl, opening, (0.92, 0.89, 0.86))
        gx, gy = nz.gaze
        iris_d = np.sqrt((lx - _F(gx)) ** 2 + (ly - _F(gy)) ** 2)
        canvas.paint(sl, opening * cover(iris_d - _F(ident.iris_r), frame.px), ident.iris)
        canvas.paint(sl, opening * cover(iris_d - _F(ident.iris_r * 0.42), frame.px), (0.03, 0.03, 0.03))
        lash = band(ly, top - _F(0.9), top + _F(0.25), frame.px) * cover(np.abs(lx) - _F(hw + 0.6), frame.px)
        canvas.paint(sl, lash * _F(0.85), (0.07, 0.05, 0.05))
        crease = gauss(lx, ly - (top * _F(1.1) - _F(2.2)), hw * 0.75, 0.5)
        canvas.darken(sl, _F(0.18) * crease)


def paint_brows(canvas: Canvas, pose: Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    for side in (-1.0, 1.0):
        u = side * (ident.eye_dx + 0.5)
        v = ident.eye_v - ident.brow_gap - nz.brow_raise
        frame = pose.frame(u, v, surface_z(u, v) + 1.5, angle=-side * ident.brow_tilt)
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
        alpha = band(ly, centre - half, centre + half, frame.px) * cover(np.abs(lx) - _F(hl), frame.px)
        canvas.paint(sl, alpha * _F(0.92), ident.brow)


def nose_tip_z(ident: IdentityParams) -> float:
    return surface_z(0.0, ident.nose_v) + ident.nose_depth


def paint_nose(canvas: Canvas, pose: Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    """Side shadow, tip highlight, wings, nostrils."""
    tip_z = nose_tip_z(ident)
    light_side = math.sin(math.radians(nz.light_az))
    bridge_len = ident.nose_v - ident.eye_v
    bridge = pose.frame(
        -0.7 * ident.nose_hw * np.sign(light_side + 1e-9), ident.nose_v - bridge_len / 2, tip_z - 6.0
    )
    soft_shadow(canvas, bridge, ident.nose_hw * 0.35, bridge_len * 0.45, 0.10 + 0.18 * abs(light_side))
    under = pose.frame(0.0, ident.nose_v + 3.5, tip_z - 8.0)
    soft_shadow(canvas, under, ident.nose_hw * 0.9, 1.8, 0.22)
    for side in (-1.0, 1.0):
        wing = pose.frame(side * ident.nose_hw * 0.75, ident.nose_v - 0.5, tip_z - 6.0)
        soft_shadow(canvas, wing, ident.nose_hw * 0.3, 2.2, 0.14)
        nostril = pose.frame(side * ident.nose_hw * 0.42, ident.nose_v + 1.6, tip_z - 4.0, angle=side * 15.0)
        ry = ident.nostril_r * 0.6 * (1.0 + 1.5 * max(0.0, math.sin(pose.pitch)))
        draw_ellipse(canvas, nostril, ident.nostril_r * 1.2, ry, as_colour(np.array(ident.skin) * 0.3))
    highlight = pose.frame(0.0, ident.nose_v - 2.0, tip_z)
    reg = highlight.region(-6.0, 6.0, -6.0, 6.0, canvas.size)
    if reg is not None:
        sl, lx, ly = reg
        canvas.paint(sl, _F(0.18) * gauss(lx, ly, ident.nose_hw * 0.35, 2.0), (1.0, 0.95, 0.9))


def _mouth_line(lx: np.ndarray, hw: float, smile: float) -> np.ndarray:
    q = lx / _F(hw)
    return -_F(2.6 * smile) * q * q


def mouth_frame(pose: Pose, ident: IdentityParams, nz: NuisanceParams) -> tuple[Frame, float]:
    """Frame centred on the mouth (corners at local ``(+-hw, -2.6 * smile)``) and its half-width."""
    frame = pose.frame(0.0, ident.mouth_v, surface_z(0.0, ident.mouth_v) + 2.0)
    return frame, ident.mouth_hw * (1.0 + 0.08 * nz.smile)


def paint_mouth(canvas: Canvas, pose: Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
    """Lips, opened by ``mouth_open`` and curved by ``smile``."""
    frame, hw = mouth_frame(pose, ident, nz)
    gap = nz.mouth_open * 4.0
    reg = frame.region(-hw - 1, hw + 1, -ident.lip_up - 5.0, ident.lip_lo + gap + 3.0, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    q = np.clip(1.0 - (lx / _F(hw)) ** 2, 0.0, 1.0)
    line = _mouth_line(lx, hw, nz.smile)
    bow = _F(0.6) * np.exp(-((lx / _F(2.0)) ** 2))  # cupid's bow dip
    width = cover(np.abs(lx) - _F(hw), frame.px)
    opening = gap * q**0.6
    upper = band(ly, line - _F(ident.lip_up) * q**0.5 + bow, line - opening / 2, frame.px)
    lower = band(ly, line + opening / 2, line + opening / 2 + _F(ident.lip_lo) * q**0.6, frame.px)
    if gap > 0.3:
        inside = band(ly, line - opening / 2, line + opening / 2, frame.px) * width
        canvas.paint(sl, inside, (0.18, 0.05, 0.06))
        teeth = band(ly, line - opening / 2, line - opening / 2 + _F(min(2.0, gap * 0.45)), frame.px)
        canvas.paint(sl, inside * teeth, (0.85, 0.83, 0.78))
    canvas.paint(sl, np.maximum(upper, lower) * width, ident.lip)
    canvas.darken(sl, _F(0.35) * width * np.exp(_F(-0.5 / 0.55**2) * (ly - line) ** 2))


def paint_beard(canvas: Canvas, pose: Pose, ident: IdentityParams, hair: np.ndarray, moustache: bool) -> None:
    """Facial hair: stubble / goatee / full beard under the mouth, moustache (drawn after the lips)."""
    if ident.beard == "none":
        return
    colour = (hair * 0.9).astype(_F)
    if moustache:
        if ident.beard in ("moustache", "goatee", "full"):
            v = ident.mouth_v - ident.lip_up - 2.0
            frame = pose.frame(0.0, v, surface_z(0.0, v) + 3.0)
            hw = ident.mouth_hw + 1.5
            reg = frame.region(-hw - 1, hw + 1, -4.0, 6.0, canvas.size)
            if reg is not None:
                sl, lx, ly = reg
                q = lx / _F(hw)
                alpha = band(ly, _F(-2.2), _F(1.3) + _F(2.5) * q * q, frame.px) * cover(
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
    inside = cover(outline.sd(lx, ly), frame.px)
    lx, ly = outline.unshear(lx, ly)
    q = np.abs(lx) / _F(hw)
    if ident.beard == "goatee":
        region = cover(
            np.maximum(ident.mouth_v - vc + ident.lip_lo - ly, np.abs(lx) - _F(ident.mouth_hw * 0.8)),
            frame.px,
        )
        density = ident.beard_density
    else:
        line = _F(top) + _F(10.0) * (1.0 - q) - _F(8.0) * q * q
        region = cover(line - ly, frame.px)
        density = ident.beard_density * (0.35 if ident.beard == "stubble" else 1.0)
    canvas.paint(sl, inside * region * _F(density), colour)


def paint_glasses(canvas: Canvas, pose: Pose, ident: IdentityParams, glasses: Glasses) -> None:
    hw = ident.eye_hw + 3.5
    hh = glasses.lens_hh
    for side in (-1.0, 1.0):
        u, v = side * ident.eye_dx, ident.eye_v + 0.5
        frame = pose.frame(u, v, surface_z(u, v) + 6.0)
        reg = frame.region(-hw - 8, hw + 8, -hh - 2, hh + 2, canvas.size)
        if reg is None:
            continue
        sl, lx, ly = reg
        if glasses.round_frames:
            sd = ellipse_sd(lx, ly, hw, hh)
        else:  # rounded rectangle
            qx, qy = np.maximum(np.abs(lx) - _F(hw - 2.0), 0.0), np.maximum(np.abs(ly) - _F(hh - 2.0), 0.0)
            sd = np.sqrt(qx * qx + qy * qy) - _F(2.0)
        lens = cover(sd, frame.px)
        if glasses.tint > 0:
            canvas.paint(sl, lens * _F(glasses.tint), (0.05, 0.06, 0.07))
        rim = cover(np.abs(sd) - _F(glasses.thickness / 2), frame.px)
        # Bridge towards the nose and the temple arm towards the ear.
        bar_y = np.abs(ly + _F(hh * 0.4)) - _F(glasses.thickness / 2)
        bridge = cover(
            np.maximum(bar_y, np.maximum(-side * lx - _F(hw + 8.0), side * lx + _F(hw - 0.5))), frame.px
        )
        arm = cover(
            np.maximum(bar_y, np.maximum(side * lx - _F(hw + 8.0), -side * lx + _F(hw - 0.5))), frame.px
        )
        bridge = bridge * cover(-side * lx - _F(ident.eye_dx), frame.px)  # stop at the midline
        canvas.paint(sl, np.maximum(rim, np.maximum(bridge, arm)), glasses.colour)


def paint_hat(canvas: Canvas, pose: Pose, ident: IdentityParams, hat: Hat) -> None:
    rx = ident.face_hw + 4.0 + 0.5 * ident.hair_volume
    frame = pose.frame(0.0, -6.0, 0.0, fx=1.0, fy=1.0)
    reg = frame.region(-rx - 12, rx + 12, -64.0, hat.brim_v + 6.0, canvas.size)
    if reg is None:
        return
    sl, lx, ly = reg
    crown = cover(np.maximum(ellipse_sd(lx, ly, rx, 56.0), ly - _F(hat.brim_v + 6.0)), frame.px)
    shade = (1.0 - _F(0.12) * np.clip((ly - _F(hat.brim_v)) / 6.0, 0.0, 1.0))[..., None]
    canvas.paint(sl, crown, (shade * np.array(hat.colour, dtype=_F)).astype(_F))
    brim = pose.frame(0.0, hat.brim_v + 6.0, 30.0, fx=1.0)
    draw_ellipse(canvas, brim, rx + 3.0, 2.2, as_colour(np.array(hat.colour) * 0.8))


def apply_shading(canvas: Canvas, pose: Pose, ident: IdentityParams, nz: NuisanceParams) -> None:
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
    r = rot(nz.roll)
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


def finish_image(image: np.ndarray, nz: NuisanceParams, supersample: int) -> np.ndarray:
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
