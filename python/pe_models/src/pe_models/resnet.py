"""ResNet-18/34/50 with torchvision's parameter names (v1.5: the stride on the 3×3 conv), and
ResNet-PE: chosen stages whose bottlenecks share one `W` (the paper's eqs. 7-9).

A PE stage `layerN` holds `shared_w: [width, 4·width]`, used by every block as its 1×1 reduce
(`W x`) and 1×1 expand (`Wᵀ h`); each block keeps its own 3×3 conv and three BatchNorms. The stage
is entered either through a 1×1 strided projection + BN (`layerN.transition.{0,1}`,
`first_block = "projection"`) or through a standard bottleneck `layerN.0` (`"standard"`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ResNetConfig


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free "same" conv, initialised as torchvision's ResNet (kaiming normal, fan-out)."""
    layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return layer


def batch_norm(channels: int, zero_init: bool = False) -> nn.BatchNorm2d:
    """`zero_init` starts the scale at 0, so a residual branch begins as the identity."""
    bn = nn.BatchNorm2d(channels)
    if zero_init:
        nn.init.zeros_(bn.weight)
    return bn


def projection(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """The 1×1 strided conv + BN that changes channels and resolution (`.0`, `.1`, as torchvision)."""
    return nn.Sequential(conv(c_in, c_out, 1, stride), batch_norm(c_out))


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    return projection(c_in, c_out, stride) if stride != 1 or c_in != c_out else None


class BasicBlock(nn.Module):
    """torchvision's `BasicBlock`: two 3×3 convs, the first strided."""

    def __init__(self, c_in: int, c_out: int, stride: int, zero_init_last_bn: bool):
        super().__init__()
        self.conv1, self.bn1 = conv(c_in, c_out, 3, stride), batch_norm(c_out)
        self.conv2, self.bn2 = conv(c_out, c_out, 3), batch_norm(c_out, zero_init_last_bn)
        self.downsample = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, C_out, H/s, W/s]
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision's `Bottleneck`: 1×1 reduce, 3×3 (strided), 1×1 expand."""

    def __init__(self, c_in: int, width: int, c_out: int, stride: int, zero_init_last_bn: bool):
        super().__init__()
        self.conv1, self.bn1 = conv(c_in, width, 1), batch_norm(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride), batch_norm(width)
        self.conv3, self.bn3 = conv(width, c_out, 1), batch_norm(c_out, zero_init_last_bn)
        self.downsample = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, width, H, W] -> [B, width, H/s, W/s] -> [B, C_out, H/s, W/s]
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class PeBottleneck(nn.Module):
    """`x + Wᵀ G(W x)` with the stage's `W`: the block owns only its 3×3 conv and BatchNorms."""

    def __init__(self, width: int, channels: int, zero_init_last_bn: bool):
        super().__init__()
        self.bn1 = batch_norm(width)
        self.conv2, self.bn2 = conv(width, width, 3), batch_norm(width)
        self.bn3 = batch_norm(channels, zero_init_last_bn)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] -> W x: [B, width, H, W] -> Wᵀ h: [B, C, H, W]
        width, channels = w.shape
        out = F.relu(self.bn1(F.conv2d(x, w.view(width, channels, 1, 1))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(F.conv2d(out, w.t().reshape(channels, width, 1, 1)))
        return F.relu(out + x)


class PeStage(nn.Module):
    """A stage whose PE bottlenecks all use one `shared_w`, entered as `first_block` says."""

    def __init__(self, c_in: int, width: int, c_out: int, blocks: int, stride: int, config: ResNetConfig):
        super().__init__()
        # torchvision's init of the 1×1 reduce conv W replaces: kaiming normal, fan-out = width.
        self.shared_w = nn.Parameter(torch.randn(width, c_out) * (2.0 / width) ** 0.5)
        zero_init = config.zero_init_last_bn
        standard_first = config.first_block == "standard"
        # The entrance: a projection when channels or resolution change, or block 0 as a standard
        # bottleneck; blocks are registered as `0`..`n-1`, torchvision's numbering.
        self.transition = None
        if standard_first:
            self.add_module("0", Bottleneck(c_in, width, c_out, stride, zero_init))
        elif stride != 1 or c_in != c_out:
            self.transition = projection(c_in, c_out, stride)
        self.first_pe_block = int(standard_first)
        for index in range(self.first_pe_block, blocks):
            self.add_module(str(index), PeBottleneck(width, c_out, zero_init))
        self.num_blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, C_out, H/s, W/s]
        if self.transition is not None:
            x = self.transition(x)
        for index in range(self.num_blocks):
            block = getattr(self, str(index))
            x = block(x) if index < self.first_pe_block else block(x, self.shared_w)
        return x


class ResNet(nn.Module):
    """`conv1, bn1, layer1..layerN, fc`, each stage standard or PE as the config says."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        c = self.config = config
        kernel, stride = (7, 2) if c.stem == "imagenet" else (3, 1)
        self.conv1, self.bn1 = conv(c.in_channels, c.stem_channels, kernel, stride), batch_norm(c.stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if c.stem == "imagenet" else nn.Identity()
        c_in = c.stem_channels
        for index, (blocks, width) in enumerate(zip(c.layers, c.widths)):
            c_out, stride = width * c.expansion, 1 if index == 0 else 2
            if index + 1 in c.pe_stages:
                stage = PeStage(c_in, width, c_out, blocks, stride, c)
            else:
                stage = nn.Sequential(*(self._block(c_in if b == 0 else c_out, width, c_out, stride if b == 0 else 1)
                                        for b in range(blocks)))
            self.add_module(f"layer{index + 1}", stage)
            c_in = c_out
        self.num_stages, self.num_classes, self.num_features = len(c.layers), c.num_classes, c_in
        # nn.Linear's default init, as torchvision leaves it.
        self.fc = nn.Linear(c_in, c.num_classes)

    def _block(self, c_in: int, width: int, c_out: int, stride: int) -> nn.Module:
        if self.config.block == "basic":
            return BasicBlock(c_in, c_out, stride, self.config.zero_init_last_bn)
        return Bottleneck(c_in, width, c_out, stride, self.config.zero_init_last_bn)

    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map: [B, C_in, H, W] -> [B, C, H', W']."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then `fc` (unless `pre_logits`): [B, C, H', W'] -> [B, classes]."""
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C_in, H, W] -> [B, num_classes]
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh `fc` for `num_classes` (timm's interface, for fine-tuning)."""
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)
