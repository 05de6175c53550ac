"""``StructuredConv2d.from_conv`` keeps every geometry attribute of the conv (stride, padding
and dilation per axis): the round trip is the same layer, and it computes the same output."""

import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.nn import StructuredConv2d

from strategies import conv_geometries, structures


@settings(max_examples=20)
@given(structures(max_channels=4, max_kernel=3), conv_geometries(), st.integers(0, 2**31 - 1))
def test_from_conv_keeps_stride_padding_and_dilation_per_axis(structure, geometry, seed):
    generator = torch.Generator().manual_seed(seed)
    out_channels = 2 * structure.groups
    conv = nn.Conv2d(
        structure.in_channels,
        out_channels,
        structure.kernel_size,
        stride=geometry.stride,
        padding=geometry.padding[:2],
        dilation=geometry.dilation,
        groups=structure.groups,
        dtype=torch.float64,
    )
    alpha = torch.randn(
        structure.alpha_shape(out_channels), generator=generator, dtype=torch.float64
    )
    with torch.no_grad():
        conv.weight.copy_(structure.compose(alpha))
    layer = StructuredConv2d.from_conv(
        conv, structure.reduced_channels, structure.reduced_kernel_size
    )
    geometry_of = lambda m: (m.stride, m.padding, m.dilation, m.groups)  # noqa: E731
    assert geometry_of(layer) == geometry_of(conv)
    assert geometry_of(layer.to_conv()) == geometry_of(conv)
    size = geometry.input_size(structure.kernel_size)
    x = torch.randn(1, structure.in_channels, *size, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_a_dilated_conv_round_trips():
    """The example of the issue: a 3x3 conv dilated by 2, structured 2x2."""
    conv = nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False, dtype=torch.float64)
    layer = StructuredConv2d.from_conv(conv, 2, 2)
    assert layer.dilation == (2, 2) and layer.to_conv().dilation == (2, 2)
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    expected = nn.functional.conv2d(
        x, layer.structure.project(conv.weight.detach()), padding=2, dilation=2
    )
    torch.testing.assert_close(layer(x), expected)


def test_same_padding_round_trips_as_a_string():
    conv = nn.Conv2d(4, 4, 3, padding="same", bias=False, dtype=torch.float64)
    layer = StructuredConv2d.from_conv(conv, 2, 2)
    assert layer.padding == "same" and layer.to_conv().padding == "same"
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    expected = nn.functional.conv2d(x, layer.structure.project(conv.weight.detach()), padding=1)
    torch.testing.assert_close(layer(x), expected)
