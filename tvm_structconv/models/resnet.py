"""ResNet-18 and ResNet-50 (He et al., CVPR 2016) in plain torch, as torchvision builds them.

Module names, and so ``state_dict`` keys, are torchvision's (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``, ``fc.weight`` …), so torchvision
checkpoints load unchanged. Bottleneck blocks stride their 3×3 conv (ResNet v1.5), as
torchvision does.
"""

from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
import torch.nn as nn

from tvm_structconv.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3×3 conv with padding 1 and no bias."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1×1 conv with no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers and a residual connection (ResNet-18/34).

    Parameters
    ----------
    in_channels
        Channels of the block's input.
    planes
        Channels of the block's convs; the output has ``planes * expansion`` channels.
    stride
        Stride of the first conv.
    downsample
        Maps the input to the output's shape for the residual, or ``None`` for the identity.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand, each with BatchNorm, and a residual (ResNet-50).

    Parameters
    ----------
    in_channels
        Channels of the block's input.
    planes
        Channels of the 1×1 reduce and 3×3 convs; the output has ``planes * expansion``.
    stride
        Stride of the 3×3 conv.
    downsample
        Maps the input to the output's shape for the residual, or ``None`` for the identity.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The three conv + BatchNorm layers (ReLU between them) plus the shortcut, then ReLU."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """A ResNet: 7×7 stem, max-pool, four stages of residual blocks, average pool, linear.

    Convs are initialized Kaiming-normal (fan-out, ReLU gain), BatchNorm to weight 1 and bias
    0, the classifier as ``nn.Linear`` does, as in torchvision.

    Parameters
    ----------
    block
        :class:`BasicBlock` or :class:`Bottleneck`.
    layers
        Blocks per stage (four stages of 64, 128, 256, 512 planes).
    num_classes
        Outputs of the final linear layer.
    """

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(block, 64, 64, layers[0], stride=1)
        self.layer2 = _stage(block, 64 * block.expansion, 128, layers[1], stride=2)
        self.layer3 = _stage(block, 128 * block.expansion, 256, layers[2], stride=2)
        self.layer4 = _stage(block, 256 * block.expansion, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, 3, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(block: Block, in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` residual blocks; the first strides and projects the shortcut if shapes change."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
        )
    first = block(in_channels, planes, stride, downsample)
    return nn.Sequential(first, *(block(out_channels, planes) for _ in range(1, blocks)))


@register_model
def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18: basic blocks ``(2, 2, 2, 2)``; 11,689,512 parameters for 1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register_model
def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50: bottleneck blocks ``(3, 4, 6, 3)``; 25,557,032 parameters for 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)
