"""ImageNet ResNet-18/34/50/101: torchvision's own definitions, so the layout, the
parameter names and torchvision's pretrained state_dicts match exactly."""
from __future__ import annotations

import torch.nn as nn
import torchvision.models as tvm

_BUILDERS = {18: tvm.resnet18, 34: tvm.resnet34, 50: tvm.resnet50, 101: tvm.resnet101}


def imagenet_resnet(depth: int, num_classes: int = 1000, in_channels: int = 3) -> tvm.ResNet:
    """torchvision ResNet-`depth` with random weights; a non-RGB input replaces conv1."""
    if depth not in _BUILDERS:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(_BUILDERS)}, got {depth}")
    model = _BUILDERS[depth](weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
