"""Parametric faces, part 2: geometry (head frame -> image, local part frames) and the canvas.

A part lives in a local frame whose image mapping combines its own rotation, the pose foreshortening
at its place on the head, the roll and the global scale; shapes are soft signed-distance masks.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from facesynth.generators.parametric.parameters import HEAD_CENTRE_112, NuisanceParams

_F = np.float32


# ----------------------------------------------------------------------------------------------
# Geometry: head frame -> image, and local part frames
# ----------------------------------------------------------------------------------------------


def rot(deg: float) -> tuple[float, float, float, float]:
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


class Frame:
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


class Pose:
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
        self.inplane = tuple(self.unit * t for t in rot(-nuisance.roll))

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
    ) -> Frame:
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
        jac = _matmul(_matmul(self.inplane, (fx, 0.0, 0.0, fy)), rot(angle))
        px, py = self.project(u, v, z)
        a, b, c, d = self.inplane
        return Frame((self.centre[0] + a * px + b * py, self.centre[1] + c * px + d * py), jac)


def surface_z(u: float, v: float) -> float:
    """Depth of the face surface at (u, v): a flattened ellipsoid in front of the head's centre."""
    return 38.0 * math.sqrt(max(0.05, 1.0 - (u / 48.0) ** 2 - (v / 64.0) ** 2))


# ----------------------------------------------------------------------------------------------
# Canvas and shape primitives
# ----------------------------------------------------------------------------------------------


class Canvas:
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


def cover(sd: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage of a signed distance (negative inside), one pixel wide ramp."""
    out = _F(0.5) - sd * _F(1.0 / px)
    return np.minimum(np.maximum(out, _F(0.0), out=out), _F(1.0), out=out)


def ellipse_sd(lx: np.ndarray, ly: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (first-order, exact on the boundary)."""
    qx, qy = lx / _F(rx), ly / _F(ry)
    k = np.sqrt(qx * qx + qy * qy)
    g = np.sqrt((qx / _F(rx)) ** 2 + (qy / _F(ry)) ** 2)
    return (k - 1.0) * k / np.maximum(g, _F(1e-6))


def band(ly: np.ndarray, top: np.ndarray, bottom: np.ndarray, px: float) -> np.ndarray:
    """Coverage of ``top <= ly <= bottom`` (``top``/``bottom`` may vary along x)."""
    return cover(np.maximum(top - ly, ly - bottom), px)


def gauss(lx: np.ndarray, ly: np.ndarray, rx: float, ry: float) -> np.ndarray:
    return np.exp(-0.5 * ((lx / _F(rx)) ** 2 + (ly / _F(ry)) ** 2))


def draw_ellipse(canvas: Canvas, frame: Frame, rx: float, ry: float, colour, fg: bool = True) -> None:
    reg = frame.region(-rx - 1, rx + 1, -ry - 1, ry + 1, canvas.size)
    if reg is not None:
        sl, lx, ly = reg
        canvas.paint(sl, cover(ellipse_sd(lx, ly, rx, ry), frame.px), colour, fg)


def soft_shadow(canvas: Canvas, frame: Frame, rx: float, ry: float, amount: float) -> None:
    reg = frame.region(-2.5 * rx, 2.5 * rx, -2.5 * ry, 2.5 * ry, canvas.size)
    if reg is not None and amount > 0:
        sl, lx, ly = reg
        canvas.darken(sl, _F(amount) * gauss(lx, ly, rx, ry))
