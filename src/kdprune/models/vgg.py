"""VGG-11/16/19 with batch normalisation (Simonyan & Zisserman 2015), CIFAR style.

Max-pools use ``ceil_mode`` so the nets also run on images smaller than 32x32 (a 1x1 map stays 1x1);
the classifier is global average pooling and one linear layer, as in the pruning literature.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from kdprune.models.registry import register_model

_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg", "VGG-11 with BN, CIFAR style (GAP + one linear layer)", first_conv="features.0")
def vgg11(num_classes: int, in_channels: int = 3) -> nn.Module:
    return VGG(_CFG["vgg11"], num_classes, in_channels)


@register_model("vgg", "VGG-16 with BN, CIFAR style (GAP + one linear layer)", first_conv="features.0")
def vgg16(num_classes: int, in_channels: int = 3) -> nn.Module:
    return VGG(_CFG["vgg16"], num_classes, in_channels)


@register_model("vgg", "VGG-19 with BN, CIFAR style (GAP + one linear layer)", first_conv="features.0")
def vgg19(num_classes: int, in_channels: int = 3) -> nn.Module:
    return VGG(_CFG["vgg19"], num_classes, in_channels)
