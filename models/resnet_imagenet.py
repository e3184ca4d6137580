"""ImageNet ResNet-18/34/50/101: torchvision's own definitions, so the layout, the
parameter names and torchvision's pretrained state_dicts match exactly."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

if TYPE_CHECKING:
    import torchvision

DEPTHS = (18, 34, 50, 101)


def imagenet_resnet(depth: int, num_classes: int = 1000, in_channels: int = 3) -> torchvision.models.ResNet:
    """torchvision ResNet-`depth` with random weights; a non-RGB input replaces conv1."""
    import torchvision  # here, not at the top: importing it costs every CLI start about 2 s

    if depth not in DEPTHS:
        raise ValueError(f"ImageNet ResNet depth must be one of {list(DEPTHS)}, got {depth}")
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
