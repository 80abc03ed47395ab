"""IResNet, the face-recognition backbone of insightface's arcface_torch, state-dict compatible.

Written from arcface_torch's ``recognition/arcface_torch/backbones/iresnet.py``: parameter and buffer
names and shapes equal those in arcface_torch's ``backbone.pth`` files, so an official checkpoint loads with ``load_state_dict(..., strict=True)``.

Layout: stem (3x3 conv, BN, PReLU) -> four stages whose first block has stride 2 -> BN -> flatten ->
dropout -> Linear -> BatchNorm1d with its weight fixed at 1 (only the bias learns). The output is the
*unnormalised* embedding; callers L2-normalise it. Input: RGB in [-1, 1], 112x112 by default.

Besides the official sizes, ``widths``/``stem_width``/``num_features``/``input_size`` make narrow
variants for tests and CPU experiments; the key names stay the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.utils.checkpoint
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

BN_EPS = 1e-5
OFFICIAL_WIDTHS = (64, 128, 256, 512)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def output_side(side: int, num_stages: int = 4) -> int:
    """Spatial side after the stride-2 stages (3x3 conv, padding 1: ceil(side / 2) each)."""
    for _ in range(num_stages):
        side = (side + 1) // 2
    return side


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (carries the stride) -> BN, plus the shortcut.

    No activation after the addition, as in arcface_torch.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        return out + identity


class IResNet(ModelMixin, ConfigMixin):
    """IResNet backbone: images (B, 3, H, W) in [-1, 1] -> unnormalised (B, num_features) embeddings.

    Args:
        layers: blocks per stage, e.g. (3, 4, 14, 3) for r50.
        num_features: embedding width (512 in arcface_torch).
        dropout_rate: dropout before the final Linear (arcface_torch trains with 0).
        widths: channels of the four stages (official: 64, 128, 256, 512).
        stem_width: channels of the stem conv (official: 64).
        input_size: (H, W) of the input; sets the Linear's in-features (512 * 7 * 7 at 112x112).
        zero_init_residual: start every block's last BN weight at 0 (an arcface_torch option).
        fp32_head: run the final Linear + BatchNorm1d in float32 even under autocast, as arcface_torch
            does with ``fp16=True``; harmless in full precision.
        gradient_checkpointing: recompute each block in the backward pass to save activation memory.
        in_channels: input channels (3 for RGB; frequency-domain privacy methods feed more).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["IBasicBlock"]

    @register_to_config
    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        num_features: int = 512,
        dropout_rate: float = 0.0,
        widths: Sequence[int] = OFFICIAL_WIDTHS,
        stem_width: int = 64,
        input_size: Sequence[int] = (112, 112),
        zero_init_residual: bool = False,
        fp32_head: bool = True,
        gradient_checkpointing: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet needs 4 stages, got layers={list(layers)} widths={list(widths)}")
        if any(int(n) < 1 for n in layers):
            raise ValueError(f"every stage needs at least one block, got layers={list(layers)}")
        height, width = (int(input_size[0]), int(input_size[1]))
        self.fp32_head = fp32_head
        self.gradient_checkpointing = gradient_checkpointing

        self.conv1 = conv3x3(in_channels, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width, eps=BN_EPS)
        self.prelu = nn.PReLU(stem_width)
        inplanes = stem_width
        stages = []
        for planes, blocks in zip(widths, layers, strict=True):
            stages.append(self._make_stage(inplanes, int(planes), int(blocks)))
            inplanes = int(planes)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout_rate, inplace=True)
        self.fc = nn.Linear(inplanes * output_side(height) * output_side(width), num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        self._init_weights(zero_init_residual)

    @staticmethod
    def _make_stage(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(conv1x1(inplanes, planes, 2), nn.BatchNorm2d(planes, eps=BN_EPS))
        modules = [IBasicBlock(inplanes, planes, 2, downsample)]
        modules += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.constant_(module.bn3.weight, 0.0)

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in stage:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional trunk: (B, in_channels, H, W) -> (B, widths[-1], H/16, W/16), before ``bn2``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self._run_stage(self.layer1, x)
        x = self._run_stage(self.layer2, x)
        x = self._run_stage(self.layer3, x)
        return self._run_stage(self.layer4, x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """BN -> flatten -> dropout -> Linear -> BatchNorm1d (fixed weight)."""
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        if self.fp32_head and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.features(self.fc(x.float()))
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_body(x))
