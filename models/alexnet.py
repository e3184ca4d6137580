"""AlexNet with BatchNorm as in the reference implementation: convs 96-256-384-384-256
without bias, each followed by BatchNorm and ReLU, max-pools after conv 1, 2 and 5;
classifier 9216→4096→4096 without bias (BatchNorm1d + ReLU), then 4096→classes."""
from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _linear_bn_relu(in_features: int, out_features: int) -> list[nn.Module]:
    return [nn.Linear(in_features, out_features, bias=False), nn.BatchNorm1d(out_features), nn.ReLU(inplace=True)]


def _max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2)


class AlexNetBN(nn.Module):
    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 96, 11, 4, 2), _max_pool(),
            *_conv_bn_relu(96, 256, 5, 1, 2), _max_pool(),
            *_conv_bn_relu(256, 384, 3, 1, 1),
            *_conv_bn_relu(384, 384, 3, 1, 1),
            *_conv_bn_relu(384, 256, 3, 1, 1), _max_pool(),
        )
        # Identity at 224×224 (the features are already 6×6); lets smaller inputs run.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            *_linear_bn_relu(256 * 6 * 6, 4096),
            *_linear_bn_relu(4096, 4096),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def alexnet_bn(num_classes: int = 1000, in_channels: int = 3) -> AlexNetBN:
    return AlexNetBN(num_classes=num_classes, in_channels=in_channels)
