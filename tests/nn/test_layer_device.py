"""The conversions keep the layer's device: on torch's ``meta`` device (shapes without data, as
for instantiating a large model before loading its weights) every parameter of the converted
layer, and of the layer converted back, stays there (nn mutation survivors: ``device=``
dropped in ``from_conv``, ``to_conv``, ``from_linear``, ``to_linear``, invisible on a CPU-only
machine where the default device is the weights' device)."""

import torch
import torch.nn as nn

from tvm_structconv.nn import StructuredConv2d, StructuredLinear

META = torch.device("meta")


def devices(module: nn.Module) -> set:
    return {parameter.device for parameter in module.parameters()}


def test_conv_conversions_keep_the_device():
    conv = nn.Conv2d(4, 6, 3, padding=1, device=META)
    layer = StructuredConv2d.from_conv(conv, 2, (2, 2))
    assert devices(layer) == {META}
    assert layer(torch.empty(1, 4, 5, 5, device=META)).shape == (1, 6, 5, 5)
    assert devices(layer.to_conv()) == {META}


def test_linear_conversions_keep_the_device():
    linear = nn.Linear(8, 3, device=META)
    layer = StructuredLinear.from_linear(linear, 4)
    assert devices(layer) == {META}
    assert layer(torch.empty(2, 8, device=META)).shape == (2, 3)
    assert devices(layer.to_linear()) == {META}
