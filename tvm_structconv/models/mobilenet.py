"""MobileNetV2 (Sandler et al., CVPR 2018) in plain torch, as torchvision builds it.

Module names, and so ``state_dict`` keys, are torchvision's (``features.0.0.weight``,
``features.1.conv.0.0.weight``, ``features.18.0.weight``, ``classifier.1.weight`` …), so
torchvision checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_structconv.models.registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "conv_bn_relu6", "make_divisible", "mobilenet_v2"]

# Expansion factor t, output channels c, repeats n, stride s of the first repeat, per stage.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor`` and 90%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias, "same" padding), BatchNorm, ReLU6: torchvision's ``Conv2dNormActivation``."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1×1 expand (skipped when ``expand_ratio`` is 1), 3×3 depthwise, linear 1×1 project.

    The input is added to the output when the block keeps the shape (stride 1, equal channels).

    Parameters
    ----------
    in_channels, out_channels
        Channels of the block's input and output.
    stride
        Stride of the depthwise conv.
    expand_ratio
        Hidden channels over input channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = [conv_bn_relu6(in_channels, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output, plus ``x`` when the shape is kept."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2: a stem conv, 17 inverted residual blocks, a 1×1 conv to 1280, a classifier.

    Convs are initialized Kaiming-normal (fan-out), BatchNorm to weight 1 and bias 0, the
    classifier normal with std 0.01 and zero bias, as in torchvision.

    Parameters
    ----------
    num_classes
        Outputs of the classifier.
    width_mult
        Multiplies every layer's channels (rounded to multiples of 8); the last conv never
        shrinks below 1280 channels.
    dropout
        Dropout probability before the classifier.
    """

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        in_channels = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features = [conv_bn_relu6(3, in_channels, stride=2)]
        for expand_ratio, channels, repeats, stride in INVERTED_RESIDUAL_SETTING:
            out_channels = make_divisible(channels * width_mult)
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                features.append(
                    InvertedResidual(in_channels, out_channels, block_stride, expand_ratio)
                )
                in_channels = out_channels
        features.append(conv_bn_relu6(in_channels, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, 3, H, W)``."""
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


@register_model
def mobilenet_v2(
    num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV2:
    """MobileNetV2; 3,504,872 parameters for 1000 classes and ``width_mult=1``."""
    return MobileNetV2(num_classes, width_mult, dropout)
