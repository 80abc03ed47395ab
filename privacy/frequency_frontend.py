"""The frequency frontend shared by DCTDP, DuetFace, PartialFace and MinusFace (TFace:
``recognition/tasks/dctdp/utils.py::images_to_batch``, ``partialface/utils.py::dct_transform`` and
``idct_transform``).

Definition (TFace numerics): an aligned RGB face ``x`` (B, 3, 112, 112) in [-1, 1] is mapped to [0, 1],
upsampled x8 with bilinear interpolation and ``align_corners=True`` (112 -> 896 per side), scaled by
255, converted to JPEG full-range YCbCr, shifted by -128, cut into 8x8 blocks and transformed with the
orthonormal 2-D DCT-II. The coefficient of frequency (v, u) (v vertical, u horizontal) of colour
component c in block (i, j) lands in channel ``64 * c + 8 * v + u`` at position (i, j): 192 channels of
112 x 112, colour-major, row-major inside the block (not zig-zag).

How it is computed. Upsampling and the DCT are linear and separable, and the colour transform is a
per-pixel affine map whose offsets survive interpolation unchanged (every interpolation row sums to
one), so the colour transform is applied first at 112 x 112 and, per axis, upsample + block DCT is one
(896 x 112) matrix ``A = blockdiag(D8) @ M`` (``M`` the interpolation matrix, rows ordered as
(frequency, block)). Each output block row only touches the source rows next to it (at most three:
offsets -1, 0, +1), so ``A`` is stored as a band and ``Y = A Z A^T`` costs a few multiply-adds per output
value; the 896 x 896 image is never built. The matrices are derived in float64 from the definition and
checked to be banded when the frontend is built. Results equal the straightforward
upsample + unfold + matmul computation within float32 rounding (a few 1e-4 absolute on coefficients
of magnitude ~1e3; tests pin this against a scipy ``dctn`` reference).

Inverses:

- :meth:`FrequencyFrontend.idct_upsampled` is the exact inverse at the upsampled resolution (block
  IDCT, inverse colour transform): it returns the 896 x 896 image in [-1, 1] (float32 rounding only).
- :meth:`FrequencyFrontend.decode` returns a 112 x 112 image in [-1, 1], differentiable, with two
  modes: ``"tface"`` (TFace's ``idct_transform``: x1/8 bilinear downsampling with
  ``align_corners=True`` of the 896 image, then clamping) and ``"lstsq"`` (the least-squares left
  inverse ``(A^T A)^-1 A^T`` per axis: exact for an untouched spectrum, and the best 112 x 112 fit for
  a pruned or noisy one; no clamping). The ``"tface"`` decode is not an exact inverse: the resampling
  points fall between two interpolated samples that straddle the original pixel. Per axis the
  round trip is a tridiagonal matrix K with rows summing to one and off-diagonal entries of at most
  0.031, so before clamping ``|decode(forward(x)) - x| <= 0.125 * (largest difference between
  8-connected neighbouring pixels)``, and at most 0.25 anywhere for images in [-1, 1] (tested).

Deviations from TFace, all documented choices:

- The decode returns [-1, 1] (TFace: [0, 1]); ``"tface"`` clamps to [-1, 1], the same set of images.
- The inverse colour transform is the exact matrix inverse of the forward constants (TFace/torchjpeg
  use the rounded JPEG constants 1.402, 0.344136, 0.714136, 1.772), so round trips are exact.
- The 112 input size is a parameter (``input_size``), not hard-coded.
- ``mode="fast"`` replaces ``align_corners=True`` with ``align_corners=False``: with a factor of 8 the
  upsample-then-block-DCT is then periodic and is exactly one fixed stride-1 3x3 convolution (64
  filters per colour component, replicate padding reproduces PyTorch's edge clamping). Its numbers
  are *not* TFace's (checkpoints trained on one mode do not transfer to the other).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facesynth.core.errors import FacesynthError

#: JPEG full-range RGB -> YCbCr (ITU-T T.871), rows Y, Cb, Cr; applied to RGB in [0, 255].
YCBCR_MATRIX = np.array(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ],
    dtype=np.float64,
)
#: Offsets added after the matrix (Cb and Cr are centred on 128).
YCBCR_OFFSET = np.array([0.0, 128.0, 128.0], dtype=np.float64)
#: Level shift applied to every component before the DCT (JPEG convention).
LEVEL_SHIFT = 128.0

BLOCK = 8
FREQS = BLOCK * BLOCK  # 64 frequencies per colour component
NUM_COLOURS = 3
NUM_CHANNELS = NUM_COLOURS * FREQS  # 192
MODES = ("tface", "fast")
DECODE_METHODS = ("tface", "lstsq")


def channel_index(colour: int, v: int, u: int) -> int:
    """Channel of colour component ``colour`` (0 Y, 1 Cb, 2 Cr) at vertical/horizontal frequency (v, u)."""
    if not (0 <= colour < NUM_COLOURS and 0 <= v < BLOCK and 0 <= u < BLOCK):
        raise ValueError(f"bad (colour, v, u) = ({colour}, {v}, {u})")
    return FREQS * colour + BLOCK * v + u


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (float64): ``D[k, r] = alpha(k) cos((2r+1) k pi / 2n)``."""
    k = np.arange(n)[:, None]
    r = np.arange(n)[None, :]
    mat = np.cos((2 * r + 1) * k * math.pi / (2 * n)) * math.sqrt(2.0 / n)
    mat[0, :] = math.sqrt(1.0 / n)
    return mat


def interpolation_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D linear interpolation, as ``F.interpolate`` defines it.

    ``align_corners=True``: source coordinate ``k (n_in - 1) / (n_out - 1)``. ``False``: ``(k + 0.5)
    n_in / n_out - 0.5`` clamped at 0. The upper neighbour index is clamped to ``n_in - 1``.
    """
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    for k in range(n_out):
        if align_corners:
            src = k * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((k + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        mat[k, i0] += 1.0 - lam
        mat[k, i1] += lam
    return mat


def _band(mat: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """Band form of a (F, nb, nq) coupling between blocks i and pixels q.

    Returns offsets ``o_k`` (q = i + o_k) and coefficients ``c[f, i, k] = mat[f, i, i + o_k]`` (zero
    where i + o_k is outside), after checking that nothing outside the band is non-zero.
    """
    f, nb, nq = mat.shape
    rows, cols = np.nonzero(np.abs(mat).max(axis=0) > 0)
    offsets = tuple(range(int((cols - rows).min()), int((cols - rows).max()) + 1))
    coeffs = np.zeros((f, nb, len(offsets)), dtype=np.float64)
    covered = np.zeros_like(mat)
    for k, off in enumerate(offsets):
        for i in range(nb):
            q = i + off
            if 0 <= q < nq:
                coeffs[:, i, k] = mat[:, i, q]
                covered[:, i, q] = mat[:, i, q]
    if not np.array_equal(covered, mat):  # pragma: no cover - a construction bug, not bad input
        raise AssertionError("frequency frontend matrix is not banded as expected")
    return offsets, coeffs


@lru_cache(maxsize=8)
def _axis_operators(input_size: int, upsample: int, align_corners: bool) -> dict[str, object]:
    """Per-axis float64 operators of the frontend (cached; see the module docstring)."""
    n_up = input_size * upsample
    if n_up % BLOCK:
        raise FacesynthError(f"input_size*upsample = {n_up} is not a multiple of the {BLOCK}-pixel block")
    nb = n_up // BLOCK
    interp = interpolation_matrix(input_size, n_up, align_corners)  # (n_up, n)
    d8 = dct_matrix(BLOCK)
    # A[f, i, q] = sum_r D[f, r] M[8 i + r, q]: frequency f of block i from source pixel q
    forward = np.einsum("fr,irq->fiq", d8, interp.reshape(nb, BLOCK, input_size))
    # TFace decode: downsample the 896 image with align_corners=True, G[q, (f, i)] = sum_r Dn[q, 8i+r] D[f, r]
    down = interpolation_matrix(n_up, input_size, True)  # (n, n_up)
    decode = np.einsum("qir,fr->fiq", down.reshape(input_size, nb, BLOCK), d8)
    gram = np.einsum("fiq,fip->qp", forward, forward)  # A^T A = M^T M (block DCT is orthogonal)
    return {
        "forward": _band(forward),
        "decode": _band(decode),
        "gram_inv": np.linalg.inv(gram),
        "nb": nb,
    }


class FrequencyFrontend(nn.Module):
    """Block DCT of aligned faces (B, 3, S, S) in [-1, 1] -> (B, 192, S*up/8, S*up/8), and its inverses.

    Args:
        input_size: side of the aligned face (112).
        upsample: upsampling factor before the 8x8 block DCT (8, so one block per source pixel).
        mode: ``"tface"`` (bilinear, ``align_corners=True``: TFace-compatible numbers) or ``"fast"``
            (``align_corners=False``: one fixed 3x3 convolution; different numbers, see module doc).

    The operators are buffers (non-persistent), so ``.to(device)`` moves them; every method runs on
    any device and dtype (float32/float64; half-precision input is computed in float32, and autocast is
    switched off inside, since bf16/fp16 cannot hold the coefficients' range to the precision the
    privacy methods' channel selection needs). The forward is differentiable when its input requires a
    gradient; otherwise it takes a chunked in-place path that writes each output value once.
    """

    def __init__(self, input_size: int = 112, upsample: int = 8, mode: str = "tface"):
        super().__init__()
        if mode not in MODES:
            raise FacesynthError(f"frequency frontend mode must be one of {MODES}, got {mode!r}")
        if input_size < 2 or upsample < 1:
            raise FacesynthError(f"bad frontend geometry input_size={input_size} upsample={upsample}")
        self.input_size = int(input_size)
        self.upsample = int(upsample)
        self.mode = mode
        #: colour planes per banded pass of the no-grad forward (3 = one image; see _separable_inplace)
        self.planes_per_step = 3
        ops = _axis_operators(self.input_size, self.upsample, mode == "tface")
        self.grid = int(ops["nb"])
        self.forward_offsets, fwd = ops["forward"]
        self.decode_offsets, dec = ops["decode"]
        ycc = YCBCR_MATRIX
        # z = 127.5 * (C @ x) + bias for x in [-1, 1]: RGB255 = 127.5 x + 127.5, then C, offset, -128
        bias = 127.5 * ycc.sum(axis=1) + YCBCR_OFFSET - LEVEL_SHIFT
        inv = np.linalg.inv(ycc)
        self._register_split("fwd_band", fwd)  # (8, nb, K)
        self._register_split("dec_band", dec)
        self._register_split("gram_inv", ops["gram_inv"])
        self._register_split("colour", 127.5 * ycc)
        self._register_split("colour_bias", bias)
        self._register_split("colour_inv", inv / 127.5)
        self._register_split("dct8", dct_matrix(BLOCK))
        if mode == "fast":
            self._register_split("fast_kernel", self._fast_kernel(fwd))

    def _register_split(self, name: str, value: np.ndarray) -> None:
        """Store a float64 constant as two float32 buffers (hi + lo) so that every device can hold it.

        :meth:`_const` returns ``hi`` for float32/16 work and ``hi + lo`` (about 48 significant bits)
        for float64 work, so the frontend also runs in double precision where a device supports it.
        """
        hi = torch.from_numpy(value.astype(np.float32))
        lo = torch.from_numpy((value - hi.double().numpy()).astype(np.float32))
        self.register_buffer(f"{name}_hi", hi, persistent=False)
        self.register_buffer(f"{name}_lo", lo, persistent=False)

    def _const(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        hi = getattr(self, f"{name}_hi")
        if dtype == torch.float64:
            return hi.to(dtype) + getattr(self, f"{name}_lo").to(dtype)
        return hi.to(dtype)

    # ------------------------------------------------------------------------------------------
    # helpers

    def _fast_kernel(self, band: np.ndarray) -> np.ndarray:
        """(192, 1, K, K) conv weights of the periodic (align_corners=False) frontend, per colour group."""
        if self.upsample != BLOCK or self.forward_offsets != (-1, 0, 1):
            raise FacesynthError("mode='fast' needs upsample=8 (one 8x8 block per source pixel)")
        mid = band[:, self.grid // 2, :]  # interior row: the same for every block when periodic
        if not np.allclose(band[:, 1:-1, :], mid[:, None, :], atol=1e-12):  # pragma: no cover
            raise AssertionError("fast frontend band is not periodic")
        kernel = np.einsum("vk,ul->vukl", mid, mid).reshape(FREQS, 1, 3, 3)
        return np.tile(kernel, (NUM_COLOURS, 1, 1, 1))

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a clear error unless ``images`` is (B, 3, S, S) floating point with S = input_size."""
        if not isinstance(images, torch.Tensor):
            raise FacesynthError(f"expected a torch.Tensor of images, got {type(images).__name__}")
        shape = tuple(images.shape)
        s = self.input_size
        if images.dim() != 4 or shape[1] != 3 or shape[2:] != (s, s):
            raise FacesynthError(f"expected RGB images of shape (B, 3, {s}, {s}) in [-1, 1], got {shape}")
        if not images.is_floating_point():
            raise FacesynthError(f"expected floating-point images in [-1, 1], got dtype {images.dtype}")

    def check_coefficients(self, coeffs: torch.Tensor) -> None:
        """Raise a clear error unless ``coeffs`` is (B, 192, g, g) with g the block grid side."""
        g = self.grid
        if (
            not isinstance(coeffs, torch.Tensor)
            or coeffs.dim() != 4
            or tuple(coeffs.shape[1:])
            != (
                NUM_CHANNELS,
                g,
                g,
            )
        ):
            shape = tuple(coeffs.shape) if isinstance(coeffs, torch.Tensor) else type(coeffs).__name__
            raise FacesynthError(
                f"expected DCT coefficients of shape (B, {NUM_CHANNELS}, {g}, {g}) "
                f"(zero-fill pruned channels first), got {shape}"
            )

    def to_ycbcr_shifted(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] RGB -> JPEG YCbCr in [0, 255] minus 128 (per pixel, at input resolution)."""
        m = self._const("colour", images.dtype)
        b = self._const("colour_bias", images.dtype)
        return torch.einsum("cd,bdhw->bchw", m, images) + b.view(1, 3, 1, 1)

    def from_ycbcr_shifted(self, planes: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_ycbcr_shifted` (exact matrix inverse), back to [-1, 1] RGB."""
        m = self._const("colour_inv", planes.dtype)
        b = self._const("colour_bias", planes.dtype)
        return torch.einsum("cd,bdhw->bchw", m, planes - b.view(1, 3, 1, 1))

    # ------------------------------------------------------------------------------------------
    # forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, 192, g, g) DCT coefficients (channel 64c + 8v + u)."""
        self.check_images(images)
        with _full_precision(images) as images:
            z = self.to_ycbcr_shifted(images)
            if self.mode == "fast":
                pad = F.pad(z, (1, 1, 1, 1), mode="replicate")
                return F.conv2d(pad, self._const("fast_kernel", z.dtype), groups=NUM_COLOURS)
            batch = z.shape[0]
            planes = z.reshape(batch * NUM_COLOURS, self.input_size, self.input_size)
            if torch.is_grad_enabled() and planes.requires_grad:
                out = self._separable_autograd(planes)
            else:
                out = self._separable_inplace(planes)
            return out.reshape(batch, NUM_CHANNELS, self.grid, self.grid)

    def _band_rows(self, planes: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """Apply the banded (8 x nb x K) operator along dim -2: (N, q, W) -> (N, 8, nb, W)."""
        lo, hi = -self.forward_offsets[0], self.forward_offsets[-1]
        nb, n_in = self.grid, planes.shape[-2]
        padded = F.pad(planes, (0, 0, lo, hi + max(0, nb - n_in)))
        out = None
        for k, off in enumerate(self.forward_offsets):
            term = padded[:, None, off + lo : off + lo + nb, :] * band[None, :, :, k, None]
            out = term if out is None else out + term
        return out

    def _separable_autograd(self, planes: torch.Tensor) -> torch.Tensor:
        """Out-of-place version of the forward (keeps the autograd graph)."""
        band = self._const("fwd_band", planes.dtype)
        rows = self._band_rows(planes, band)  # (N, 8v, nb_i, W)
        n = rows.shape[0]
        cols = self._band_rows(rows.reshape(n * BLOCK, self.grid, -1).transpose(1, 2), band)
        # cols: (N*8v, 8u, nb_j, nb_i) -> (N, v, u, i, j)
        cols = cols.reshape(n, BLOCK, BLOCK, self.grid, self.grid).transpose(-1, -2)
        return cols.contiguous()

    def _separable_inplace(self, planes: torch.Tensor) -> torch.Tensor:
        """Forward without autograd: two banded passes per plane, all operands contiguous in the last axis.

        Rows: ``T[v, i, :] = sum_k a[v, i, k] Z[i + o_k, :]`` (8 g x S, small); columns:
        ``Y[v, u, i, j] = sum_k a[u, j, k] T[v, i, j + o_k]``. One plane at a time keeps the temporaries
        in cache, so the 64 g^2 outputs of a plane are written once (plus two in-cache updates).
        """
        dtype = planes.dtype
        n, s, g = planes.shape[0], self.input_size, self.grid
        band = self._const("fwd_band", dtype)
        offsets = self.forward_offsets
        lo, hi = -offsets[0], offsets[-1]
        kk = len(offsets)
        out = _empty_output((n, BLOCK, BLOCK, g, g), dtype, planes.device)
        width = lo + max(g, s) + hi
        chunk = max(1, int(self.planes_per_step))
        work = torch.zeros(chunk, BLOCK, g, width, dtype=dtype, device=planes.device)
        row_coef = band.permute(2, 0, 1).reshape(kk, 1, BLOCK, g, 1)  # [k] -> (1, v, i, 1)
        col_coef = band.permute(2, 0, 1).reshape(kk, 1, 1, BLOCK, 1, g)  # [k] -> (1, 1, u, 1, j)
        padded = F.pad(planes, (0, 0, lo, hi + max(0, g - s)))  # (n, lo + S + hi, S)
        for p0 in range(0, n, chunk):
            c = min(chunk, n - p0)
            rows = work[:c, :, :, lo : lo + s]  # (c, v, i, q') view
            for k, off in enumerate(offsets):
                src = padded[p0 : p0 + c, None, lo + off : lo + off + g, :]  # (c, 1, i, q')
                if k == 0:
                    torch.mul(src, row_coef[k], out=rows)
                else:
                    rows.addcmul_(src, row_coef[k])
            dst = out[p0 : p0 + c]  # (c, v, u, i, j)
            for k, off in enumerate(offsets):
                src = work[:c, :, None, :, lo + off : lo + off + g]  # (c, v, 1, i, j)
                if k == 0:
                    torch.mul(src, col_coef[k], out=dst)
                else:
                    dst.addcmul_(src, col_coef[k])
        return out

    # ------------------------------------------------------------------------------------------
    # inverses

    def idct_upsampled(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Exact inverse at the upsampled resolution: (B, 192, g, g) -> (B, 3, 8g, 8g) RGB in [-1, 1].

        Block IDCT, +128 and the inverse colour transform; no resampling, no clamping. This does build
        the upsampled image (it is what it returns).
        """
        self.check_coefficients(coeffs)
        b, g = coeffs.shape[0], self.grid
        d8 = self._const("dct8", coeffs.dtype)
        c = coeffs.reshape(b, NUM_COLOURS, BLOCK, BLOCK, g, g)
        pix = torch.einsum("vr,uc,bkvuij->bkirjc", d8, d8, c).reshape(b, NUM_COLOURS, g * BLOCK, g * BLOCK)
        return self.from_ycbcr_shifted(pix)

    def block_dct_upsampled(self, upsampled: torch.Tensor) -> torch.Tensor:
        """Colour transform + 8x8 block DCT of an already upsampled [-1, 1] RGB image (B, 3, 8g, 8g).

        The inverse of :meth:`idct_upsampled`; ``block_dct_upsampled(F.interpolate(x, 8, bilinear,
        align_corners=True))`` equals ``forward(x)`` within rounding.
        """
        b, g = upsampled.shape[0], self.grid
        if tuple(upsampled.shape[1:]) != (3, g * BLOCK, g * BLOCK):
            raise FacesynthError(
                f"expected upsampled RGB of shape (B, 3, {g * BLOCK}, {g * BLOCK}), got {tuple(upsampled.shape)}"
            )
        z = self.to_ycbcr_shifted(upsampled).reshape(b, NUM_COLOURS, g, BLOCK, g, BLOCK)
        d8 = self._const("dct8", upsampled.dtype)
        return torch.einsum("vr,uc,bkirjc->bkvuij", d8, d8, z).reshape(b, NUM_CHANNELS, g, g)

    def _band_adjoint(
        self, coeffs: torch.Tensor, band: torch.Tensor, offsets: tuple[int, ...]
    ) -> torch.Tensor:
        """``Z[q, p] = sum g[v, i, q] g[u, j, p] C[v, u, i, j]`` for a banded ``g``: (N, 8, 8, g, g) -> (N, S, S)."""
        n, s, nb = coeffs.shape[0], self.input_size, self.grid
        lo = max(0, -offsets[0])
        span = lo + max(nb + offsets[-1], s)
        idx = torch.arange(nb, device=coeffs.device)
        rows = coeffs.new_zeros(n, BLOCK, span, nb)  # (N, u, q, j)
        for k, off in enumerate(offsets):
            rows = rows.index_add(2, idx + off + lo, torch.einsum("nvuij,vi->nuij", coeffs, band[:, :, k]))
        rows = rows[:, :, lo : lo + s]
        out = coeffs.new_zeros(n, s, span)  # (N, q, p)
        for k, off in enumerate(offsets):
            out = out.index_add(2, idx + off + lo, torch.einsum("nuqj,uj->nqj", rows, band[:, :, k]))
        return out[:, :, lo : lo + s]

    def decode(self, coeffs: torch.Tensor, method: str = "tface") -> torch.Tensor:
        """(B, 192, g, g) -> (B, 3, S, S) RGB in [-1, 1], differentiable (see the module docstring).

        ``method="tface"``: TFace's decode (x1/8 bilinear, align_corners=True, then clamp).
        ``method="lstsq"``: the least-squares left inverse of the forward (exact for an unmodified
        spectrum, no clamping).
        """
        self.check_coefficients(coeffs)
        if method not in DECODE_METHODS:
            raise FacesynthError(f"decode method must be one of {DECODE_METHODS}, got {method!r}")
        b, g, s = coeffs.shape[0], self.grid, self.input_size
        with _full_precision(coeffs) as coeffs:
            c = coeffs.reshape(b * NUM_COLOURS, BLOCK, BLOCK, g, g)
            if method == "tface":
                planes = self._band_adjoint(c, self._const("dec_band", coeffs.dtype), self.decode_offsets)
            else:
                planes = self._band_adjoint(c, self._const("fwd_band", coeffs.dtype), self.forward_offsets)
                r = self._const("gram_inv", coeffs.dtype)
                planes = r @ planes @ r
            image = self.from_ycbcr_shifted(planes.reshape(b, NUM_COLOURS, s, s))
            return image.clamp(-1.0, 1.0) if method == "tface" else image


@contextlib.contextmanager
def _full_precision(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """Autocast off, and bf16/fp16 input promoted to float32, for the span of one transform."""
    with torch.autocast(tensor.device.type, enabled=False):
        yield tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


_HUGE_PAGE_MIN_BYTES = 4 << 20


def _empty_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, except that large CPU outputs on Linux live on transparent huge pages.

    The frontend writes ~9.6 MB per image; with 4 KiB pages the first-touch page faults cost about
    as much as computing the coefficients. An anonymous mapping advised ``MADV_HUGEPAGE`` takes a
    fault per 2 MiB instead (same values, ordinary CPU tensor; the tensor keeps the mapping alive).
    Falls back to ``torch.empty`` wherever that is unavailable.
    """
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes < _HUGE_PAGE_MIN_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    try:
        import mmap

        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
        return torch.frombuffer(buffer, dtype=dtype, count=numel).view(shape)
    except (AttributeError, OSError, ValueError):
        return torch.empty(shape, dtype=dtype, device=device)


def reference_block_dct(images: torch.Tensor, upsample: int = 8) -> torch.Tensor:
    """The straightforward form of the same definition: upsample + colour + unfold + matmul.

    Builds the (B, 3, 896, 896) image, as TFace does; used as the baseline in
    ``benchmarks/bench_frequency_frontend.py`` and as an independent check in the tests.
    """
    b, _, h, w = images.shape
    x = (images * 0.5 + 0.5) * 255.0
    up = F.interpolate(x, scale_factor=upsample, mode="bilinear", align_corners=True)
    m = torch.as_tensor(YCBCR_MATRIX, dtype=images.dtype, device=images.device)
    off = torch.as_tensor(YCBCR_OFFSET, dtype=images.dtype, device=images.device)
    ycc = torch.einsum("cd,bdhw->bchw", m, up) + off.view(1, 3, 1, 1) - LEVEL_SHIFT
    hu, wu = ycc.shape[-2:]
    blocks = F.unfold(ycc.reshape(b * 3, 1, hu, wu), kernel_size=BLOCK, stride=BLOCK)  # (N, 64, L)
    d8 = torch.as_tensor(dct_matrix(BLOCK), dtype=images.dtype, device=images.device)
    basis = torch.kron(d8, d8)  # (64 (v,u), 64 (r,c))
    coeffs = basis @ blocks
    return coeffs.reshape(b, NUM_CHANNELS, hu // BLOCK, wu // BLOCK)


_DEFAULT: dict[tuple[str, str, int], FrequencyFrontend] = {}


def block_dct(images: torch.Tensor, mode: str = "tface") -> torch.Tensor:
    """Functional form of :class:`FrequencyFrontend` (one cached instance per mode, device and size)."""
    size = int(images.shape[-1]) if isinstance(images, torch.Tensor) and images.dim() == 4 else 112
    key = (mode, str(images.device), size)
    if key not in _DEFAULT:
        _DEFAULT[key] = FrequencyFrontend(input_size=size, mode=mode).to(images.device)
    return _DEFAULT[key](images)
