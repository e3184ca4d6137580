"""CIFAR ResNet-20/32/44/56 (He et al. 2016) with the reference implementation's
parameter names: conv_1_3x3, bn_1, stage_1..stage_3 (blocks with conv_a/bn_a/conv_b/bn_b)
and classifier. Shortcuts use option A: stride-2 subsampling plus zero-filled extra
channels, no parameters. Full precision only; ternarized variants come from
models.ternary.ternarize_model."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShortcutA(nn.Module):
    """Identity shortcut for a change of shape: subsample by `stride`, pad channels with zeros."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(planes)
        self.conv_b = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(planes)
        reshape = stride != 1 or in_planes != planes
        self.downsample = ShortcutA(stride, planes - in_planes) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        return F.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 16-32-64 channels, 3 stages of (depth-2)/6 basic blocks.
    Global average pooling makes any input size work (8×8, 28×28, 32×32, ...)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.conv_1_3x3 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn_1 = nn.BatchNorm2d(16)
        self.stage_1 = self._stage(16, 16, blocks, stride=1)
        self.stage_2 = self._stage(16, 32, blocks, stride=2)
        self.stage_3 = self._stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels)
