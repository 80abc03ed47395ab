"""A small configurable U-Net, shared by MinusFace's regenerator and the recovery attacker's decoder.

MinusFace's generator g (TFace ``recognition/tasks/minusface/minusface.py``) is a plain U-Net: per level a block of two
(3x3 conv + bias + ReLU), 2x2 max-pool between levels, transposed-conv upsampling concatenated
with the skip, and a final 1x1 conv. The paper's widths are 64/128/256/512/1024 over five levels
(about 34.6 M parameters at 192 -> 192 channels). The attack decoder (:mod:`facesynth.privacy.attacks`) uses the same family,
mapping a payload's channels to 3 image channels. One class serves both: widths, in/out channels and
an optional output activation are configuration.

Inputs whose side is not divisible by ``2 ** (levels - 1)`` still work: the upsampled map is
resized to its skip's size before concatenation (at 112 x 112 with five levels every side divides,
so the paper layout is exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

OUTPUT_ACTIVATIONS = ("none", "tanh", "sigmoid")


class ConvBlock(nn.Sequential):
    """Two 3x3 conv (with bias) + ReLU layers, the unit of every U-Net level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )


class UNet(ModelMixin, ConfigMixin):
    """U-Net (B, in_channels, H, W) -> (B, out_channels, H, W).

    Args:
        in_channels: input channels (192 for MinusFace's g, the payload's channels for an attacker).
        out_channels: output channels (192 for g, 3 for an image decoder).
        block_out_channels: widths of the levels, shallow to deep; the paper's g uses
            (64, 128, 256, 512, 1024). Tiny widths make test and CPU models.
        output_activation: "none", "tanh" (images in [-1, 1]) or "sigmoid".
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 192,
        out_channels: int = 192,
        block_out_channels: Sequence[int] = (64, 128, 256, 512, 1024),
        output_activation: str = "none",
    ):
        super().__init__()
        widths = [int(w) for w in block_out_channels]
        if len(widths) < 1 or any(w < 1 for w in widths):
            raise ValueError(f"block_out_channels must be positive widths, got {list(block_out_channels)}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}"
            )
        self.output_activation = output_activation
        self.down = nn.ModuleList()
        previous = int(in_channels)
        for width in widths:
            self.down.append(ConvBlock(previous, width))
            previous = width
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for deep, shallow in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
            self.upsample.append(
                nn.ConvTranspose2d(deep, shallow, kernel_size=3, stride=2, padding=1, output_padding=1)
            )
            self.up.append(ConvBlock(2 * shallow, shallow))
        self.head = nn.Conv2d(widths[0], int(out_channels), kernel_size=1)

    def forward(self, x: torch.Tensor, return_latent: bool = False):
        """The output map; with ``return_latent`` also the deepest feature map (for sparsity losses)."""
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        latent = x
        for upsample, block, skip in zip(self.upsample, self.up, skips[::-1][1:], strict=True):
            x = upsample(x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        out = self.head(x)
        if self.output_activation == "tanh":
            out = torch.tanh(out)
        elif self.output_activation == "sigmoid":
            out = torch.sigmoid(out)
        return (out, latent) if return_latent else out


def sparsity_kl(latent: torch.Tensor, target: float = 0.01, eps: float = 1e-8) -> torch.Tensor:
    """Sparse-autoencoder KL penalty on the batch-mean latent (MinusFace's optional term, off by default).

    The batch-mean absolute activation per latent unit is normalised to sum to 1 and compared with a
    Bernoulli target ``target``, as TFace's MinusFace stage 1 defines it (weight 0 in the paper).
    """
    rho_hat = latent.abs().mean(dim=0).flatten()
    rho_hat = rho_hat / (rho_hat.sum() + eps)
    rho_hat = rho_hat.clamp(eps, 1 - eps)
    rho = torch.full_like(rho_hat, float(target))
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
