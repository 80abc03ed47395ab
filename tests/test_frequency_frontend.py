"""The frequency frontend against its definition: scipy reference, basis patterns, colour, inverses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facesynth.core.errors import FacesynthError
from facesynth.privacy.frequency_frontend import (
    NUM_CHANNELS,
    YCBCR_MATRIX,
    FrequencyFrontend,
    block_dct,
    channel_index,
    interpolation_matrix,
    reference_block_dct,
)


@pytest.fixture(scope="module")
def frontend() -> FrequencyFrontend:
    torch.set_num_threads(2)
    return FrequencyFrontend()


def _images(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 112, 112, generator=gen) * 2 - 1


def _smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 14, 14, generator=gen) * 1.6 - 0.8
    return F.interpolate(low, size=112, mode="bilinear", align_corners=True)


def scipy_reference(images: np.ndarray) -> np.ndarray:
    """The definition written directly with numpy + scipy.fft.dctn, in float64.

    Bilinear x8 (align_corners=True) per axis by explicit index arithmetic, JPEG YCbCr, -128, 8x8 blocks, dctn ortho.
    """
    from scipy.fft import dctn

    b, _, n, _ = images.shape
    up_n = 8 * n
    grid = np.arange(up_n) * (n - 1) / (up_n - 1)
    rgb = (images.astype(np.float64) * 0.5 + 0.5) * 255.0
    i0 = np.minimum(np.floor(grid).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = grid - i0
    rows = rgb[:, :, i0, :] * (1 - lam)[:, None] + rgb[:, :, i1, :] * lam[:, None]  # (b, 3, up, n)
    up = rows[..., i0] * (1 - lam) + rows[..., i1] * lam  # (b, 3, up, up)
    ycc = np.einsum("cd,bdhw->bchw", YCBCR_MATRIX, up) + np.array([0, 128, 128])[None, :, None, None] - 128
    blocks = ycc.reshape(b, 3, n, 8, n, 8)
    coeffs = dctn(blocks, type=2, norm="ortho", axes=(3, 5))  # (b, c, i, v, j, u)
    return coeffs.transpose(0, 1, 3, 5, 2, 4).reshape(b, 3 * 64, n, n)


def test_matches_scipy_reference(frontend: FrequencyFrontend) -> None:
    x = _images(2)
    ref = scipy_reference(x.numpy())
    out = frontend(x)
    assert out.shape == (2, NUM_CHANNELS, 112, 112) and out.dtype == torch.float32
    assert np.abs(out.double().numpy() - ref).max() < 2e-3  # float32 rounding on values up to ~1e3
    out64 = FrequencyFrontend().double()(x.double())
    assert np.abs(out64.numpy() - ref).max() < 1e-9


def test_autograd_path_equals_inplace_path_and_reference(frontend: FrequencyFrontend) -> None:
    x = _images(2, seed=1)
    fast = frontend(x)
    xr = x.clone().requires_grad_(True)
    graph = frontend(xr)
    assert graph.requires_grad
    assert (graph.detach() - fast).abs().max() < 1e-3
    graph.square().mean().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()
    # the straightforward upsample + unfold + matmul form (the benchmark's baseline)
    assert (reference_block_dct(x) - fast).abs().max() < 2e-2
    assert (reference_block_dct(x.double()) - fast.double()).abs().max() < 2e-3
    assert torch.equal(block_dct(x), fast)


def test_pure_cosine_lights_one_channel() -> None:
    fe = FrequencyFrontend(input_size=16).double()  # 16 x 16 blocks: the same per-block definition
    r = torch.arange(8, dtype=torch.float64)
    for colour, v, u in [(0, 0, 1), (0, 3, 5), (1, 2, 0), (2, 7, 7), (0, 0, 0)]:
        pattern = torch.outer(
            torch.cos((2 * r + 1) * v * math.pi / 16), torch.cos((2 * r + 1) * u * math.pi / 16)
        )
        planes = torch.zeros(1, 3, 128, 128, dtype=torch.float64)
        planes[0, colour] = 20.0 * pattern.repeat(16, 16)
        coeffs = fe.block_dct_upsampled(fe.from_ycbcr_shifted(planes))
        energy = coeffs.square().sum(dim=(0, 2, 3))
        k = channel_index(colour, v, u)
        assert k == 64 * colour + 8 * v + u
        assert energy.argmax().item() == k
        assert energy[k] > 1e9 * (energy.sum() - energy[k] + 1e-30)
        # and back: one lit channel decodes to the cosine pattern at the upsampled resolution
        single = torch.zeros(1, NUM_CHANNELS, 16, 16, dtype=torch.float64)
        single[0, k] = coeffs[0, k]
        back = fe.to_ycbcr_shifted(fe.idct_upsampled(single))
        assert torch.allclose(back[0, colour], planes[0, colour], atol=1e-9)


def test_ycbcr_constants_and_colour_major_order(frontend: FrequencyFrontend) -> None:
    assert np.allclose(
        YCBCR_MATRIX,
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
        atol=0,
    )
    # constant colours: the DC of a flat 8x8 block is 8 * (component - 128), other channels vanish
    for rgb in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (30, 200, 90)]:
        r, g, b = rgb
        y = 0.299 * r + 0.587 * g + 0.114 * b
        cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
        cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
        x = (torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1).expand(1, 3, 112, 112)
        out = frontend(x.contiguous())
        expected = {0: 8 * (y - 128), 64: 8 * (cb - 128), 128: 8 * (cr - 128)}
        for channel, value in expected.items():
            assert torch.allclose(out[0, channel], torch.full((112, 112), value), atol=2e-3), (rgb, channel)
        rest = torch.ones(NUM_CHANNELS, dtype=torch.bool)
        rest[[0, 64, 128]] = False
        assert out[0, rest].abs().max() < 2e-3


def test_exact_inverse_at_upsampled_resolution(frontend: FrequencyFrontend) -> None:
    gen = torch.Generator().manual_seed(3)
    up = torch.rand(2, 3, 896, 896, generator=gen) * 2 - 1
    assert (frontend.idct_upsampled(frontend.block_dct_upsampled(up)) - up).abs().max() < 1e-5
    x = _images(2, seed=4)
    bilinear = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=True)
    assert (frontend.idct_upsampled(frontend(x)) - bilinear).abs().max() < 1e-4
    assert (frontend.block_dct_upsampled(bilinear) - frontend(x)).abs().max() < 2e-2


def test_decode_to_112_tolerances(frontend: FrequencyFrontend) -> None:
    x = _images(2, seed=5)
    coeffs = frontend(x)
    # least-squares decode: exact left inverse (float32 rounding)
    assert (frontend.decode(coeffs, "lstsq") - x).abs().max() < 1e-4
    # TFace decode: bounded by 0.125 x the largest 8-neighbour difference, and 0.25 overall
    for images in (x, _smooth_images(2, seed=6)):
        err = (frontend.decode(frontend(images), "tface") - images).abs().max().item()
        pad = F.pad(images, (1, 1, 1, 1), mode="replicate")
        diffs = [
            (pad[..., 1 + dy : 113 + dy, 1 + dx : 113 + dx] - images).abs().max().item()
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        assert err <= 0.125 * max(diffs) + 1e-4
        assert err <= 0.25
    smooth = _smooth_images(1, seed=7)
    assert (frontend.decode(frontend(smooth), "tface") - smooth).abs().max() < 0.02
    # the per-axis round-trip matrix behind the documented bound
    k = interpolation_matrix(896, 112, True) @ interpolation_matrix(112, 896, True)
    off = k - np.diag(np.diag(k))
    assert np.allclose(k.sum(axis=1), 1) and np.abs(off).max() < 0.0311
    assert np.count_nonzero(np.abs(np.triu(k, 2)) + np.abs(np.tril(k, -2)) > 1e-15) == 0


def test_decode_is_differentiable_and_handles_pruned_channels() -> None:
    small = FrequencyFrontend(input_size=8).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64) * 1.6 - 0.8
    coeffs = small(x)
    gen = torch.Generator().manual_seed(0)
    for method in ("lstsq", "tface"):
        weight = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=gen)
        c = coeffs.clone().requires_grad_(True)
        (small.decode(c, method) * weight).sum().backward()
        for _ in range(3):  # directional derivatives against central differences
            d = torch.randn(coeffs.shape, dtype=torch.float64, generator=gen) * 1e-3
            plus = (small.decode(coeffs + d, method) * weight).sum()
            minus = (small.decode(coeffs - d, method) * weight).sum()
            assert torch.isclose((c.grad * d).sum(), (plus - minus) / 2, rtol=1e-6, atol=1e-12)
    zeroed = coeffs.clone()
    zeroed[:, [0, 64, 128]] = 0
    assert torch.isfinite(small.decode(zeroed, "tface")).all()


def test_fast_mode_is_its_own_definition() -> None:
    x = _images(1, seed=8).double()
    fast = FrequencyFrontend(mode="fast").double()
    ref = fast.block_dct_upsampled(F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False))
    assert (fast(x) - ref).abs().max() < 1e-9
    assert (fast.decode(fast(x), "lstsq") - x).abs().max() < 1e-9
    # and it is not TFace's numbers
    assert (fast(x) - FrequencyFrontend().double()(x)).abs().max() > 1.0


def test_other_sizes_and_devices_agree_with_reference() -> None:
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    fe = FrequencyFrontend(input_size=24)
    assert fe(x).shape == (1, NUM_CHANNELS, 24, 24)
    assert np.abs(fe(x).double().numpy() - scipy_reference(x.numpy())).max() < 2e-3


def test_bad_input_errors(frontend: FrequencyFrontend) -> None:
    with pytest.raises(FacesynthError, match=r"\(B, 3, 112, 112\)"):
        frontend(torch.zeros(1, 3, 100, 100))
    with pytest.raises(FacesynthError, match="got \\(1, 1, 112, 112\\)"):
        frontend(torch.zeros(1, 1, 112, 112))
    with pytest.raises(FacesynthError, match="floating-point"):
        frontend(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))
    with pytest.raises(FacesynthError, match="zero-fill pruned channels"):
        frontend.decode(torch.zeros(1, 189, 112, 112))
    with pytest.raises(FacesynthError, match="decode method"):
        frontend.decode(torch.zeros(1, 192, 112, 112), "nearest")
    with pytest.raises(FacesynthError, match="mode must be one of"):
        FrequencyFrontend(mode="jpeg")
