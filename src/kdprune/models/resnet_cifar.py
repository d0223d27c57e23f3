"""ResNets for small images.

* ``resnet18/34/50``: the CIFAR variant of He et al. (2016) used by the pruning literature: a 3x3 stem
  with stride 1 and no max-pool, stages of 64/128/256/512 channels (x4 for the bottleneck), global
  average pooling and one linear classifier.
* ``resnet20/32/56``: the original CIFAR ResNets of He et al. Sec. 4.2: 16/32/64 channels, (depth-2)/6
  basic blocks per stage; projection shortcuts (1x1 conv + BN, "option B") where the shape changes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdprune.models.registry import register_model


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, block, blocks: list[int], widths: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        stages = []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(block(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


_WIDE = [64, 128, 256, 512]
_NARROW = [16, 32, 64]


@register_model("resnet", "CIFAR ResNet-18 (11.2M params at 10 classes): 3x3 stem, no max-pool")
def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], _WIDE, num_classes, in_channels)


@register_model("resnet", "CIFAR ResNet-34: 3x3 stem, no max-pool")
def resnet34(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(BasicBlock, [3, 4, 6, 3], _WIDE, num_classes, in_channels)


@register_model("resnet", "CIFAR ResNet-50 (bottleneck): 3x3 stem, no max-pool")
def resnet50(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], _WIDE, num_classes, in_channels)


@register_model("resnet", "ResNet-20 of He et al. for CIFAR (16/32/64 channels, 0.27M params)")
def resnet20(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(BasicBlock, [3, 3, 3], _NARROW, num_classes, in_channels)


@register_model("resnet", "ResNet-32 of He et al. for CIFAR (16/32/64 channels)")
def resnet32(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(BasicBlock, [5, 5, 5], _NARROW, num_classes, in_channels)


@register_model("resnet", "ResNet-56 of He et al. for CIFAR (16/32/64 channels, 0.86M params)")
def resnet56(num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(BasicBlock, [9, 9, 9], _NARROW, num_classes, in_channels)
