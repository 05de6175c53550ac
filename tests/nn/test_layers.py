"""StructuredConv2d / StructuredLinear against nn.Conv2d / nn.Linear with the composed kernel."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tvm_structconv.nn import (
    StructuredConv2d,
    StructuredLinear,
    precondition_alpha_gradients,
    structured_parameter_groups,
)
from tvm_structconv.nn.functional import structured_conv2d
from tvm_structconv.structure import Structure, banded_ones

from strategies import structures


def _layer(structure: Structure, out_per_group: int, **kwargs) -> StructuredConv2d:
    return StructuredConv2d(
        structure.in_channels,
        out_per_group * structure.groups,
        structure.kernel_size,
        structure.reduced_channels,
        structure.reduced_kernel_size,
        groups=structure.groups,
        dtype=torch.float64,
        **kwargs,
    )


@given(
    structures(max_channels=5, max_kernel=4),
    st.integers(1, 3),  # out channels per group
    st.integers(1, 3),  # stride
    st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))),
    st.integers(1, 2),  # dilation
    st.booleans(),  # bias
    st.integers(0, 2**31 - 1),
)
def test_conv_equals_conv2d_with_composed_kernel(
    structure, out_per_group, stride, padding, dilation, bias, seed
):
    torch.manual_seed(seed)
    layer = _layer(
        structure, out_per_group, stride=stride, padding=padding, dilation=dilation, bias=bias
    )
    height, width = structure.kernel_size
    x = torch.randn(
        2,
        structure.in_channels,
        dilation * (height - 1) + 4,
        dilation * (width - 1) + 3,
        dtype=torch.float64,
    )
    expected = F.conv2d(
        x,
        structure.compose(layer.alpha),
        layer.bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=structure.groups,
    )
    actual = layer(x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.to_conv()(x), expected, rtol=1e-10, atol=1e-10)


@given(
    structures(max_channels=4, max_kernel=4, allow_groups=False),
    st.sampled_from(["same", "valid"]),
    st.integers(1, 2),
)
def test_string_padding_matches_conv2d(structure, padding, dilation):
    torch.manual_seed(0)
    layer = _layer(structure, 2, padding=padding, dilation=dilation)
    x = torch.randn(1, structure.in_channels, 9, 8, dtype=torch.float64)
    reference = layer.to_conv()
    assert reference.padding == padding
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-10, atol=1e-10)


def test_depthwise_conv():
    torch.manual_seed(0)
    layer = StructuredConv2d(6, 12, 3, 6, 2, padding=1, groups=6, dtype=torch.float64)
    assert layer.structure.pool_window == (1, 2, 2)
    assert layer.alpha.shape == (12, 1, 2, 2)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    expected = F.conv2d(x, layer.structure.compose(layer.alpha), layer.bias, padding=1, groups=6)
    torch.testing.assert_close(layer(x), expected)


def test_parameters_are_alpha_and_bias():
    layer = StructuredConv2d(8, 16, 3, 4, 2, groups=2)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {"alpha": (16, 2, 2, 2), "bias": (16,)}
    assert layer.structure == Structure(8, 3, 4, 2, groups=2)
    assert (layer.reduced_channels, layer.reduced_kernel_size) == (4, (2, 2))
    assert "reduced_channels=4" in repr(layer)
    assert [name for name, _ in StructuredConv2d(4, 4, 3, 2, 2, bias=False).named_parameters()] == [
        "alpha"
    ]


def test_alpha_gradient_equals_gradient_through_composed_kernel():
    torch.manual_seed(0)
    layer = StructuredConv2d(6, 5, 3, 3, 2, stride=2, padding=1, dtype=torch.float64)
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    layer(x).square().sum().backward()
    alpha = layer.alpha.detach().clone().requires_grad_()
    F.conv2d(
        x, layer.structure.compose(alpha), layer.bias, stride=2, padding=1
    ).square().sum().backward()
    torch.testing.assert_close(layer.alpha.grad, alpha.grad)


@pytest.mark.parametrize("init, scale", [("pooled", 1.0), ("matched", 1.0), ("projected", 0.2)])
def test_initial_output_scale_against_conv2d(init, scale):
    """The pool sums D·M² inputs; "pooled" and "matched" compensate so the output scale on
    i.i.d. inputs stays that of Conv2d; "projected" (P W₀) is √ρ of it, ρ = 16·2² / (64·5²)."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, 12, 12)
    structured = StructuredConv2d(64, 64, 5, 16, 2, padding=2, init=init)  # pool 49 x 4 x 4
    ordinary = nn.Conv2d(64, 64, 5, padding=2)
    ratio = (structured(x).std() / ordinary(x).std()).item()
    assert 0.5 * scale < ratio < 2.0 * scale


@given(structures(max_channels=4, max_kernel=4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_from_conv_to_conv_round_trip(structure, out_per_group, seed):
    generator = torch.Generator().manual_seed(seed)
    out_channels = out_per_group * structure.groups
    alpha = torch.randn(
        structure.alpha_shape(out_channels), generator=generator, dtype=torch.float64
    )
    conv = nn.Conv2d(
        structure.in_channels,
        out_channels,
        structure.kernel_size,
        stride=2,
        padding=1,
        groups=structure.groups,
        dtype=torch.float64,
    )
    with torch.no_grad():
        conv.weight.copy_(structure.compose(alpha))
    layer = StructuredConv2d.from_conv(
        conv, structure.reduced_channels, structure.reduced_kernel_size
    )
    torch.testing.assert_close(layer.alpha.detach(), alpha)
    torch.testing.assert_close(layer.bias.detach(), conv.bias.detach())
    back = layer.to_conv()
    torch.testing.assert_close(back.weight, conv.weight)
    assert (back.stride, back.padding, back.groups) == (conv.stride, conv.padding, conv.groups)
    x = torch.randn(1, structure.in_channels, 6, 7, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x))


def test_from_conv_projects_an_unstructured_kernel():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, bias=False, dtype=torch.float64)
    layer = StructuredConv2d.from_conv(conv, 3, 2)
    assert layer.bias is None
    expected = layer.structure.project(conv.weight.detach())
    torch.testing.assert_close(layer.to_conv().weight.detach(), expected)
    assert layer.structure.residual(conv.weight.detach()) > 0.1


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_non_zero_padding_modes_are_rejected(mode):
    with pytest.raises(ValueError, match="padding_mode"):
        StructuredConv2d(4, 4, 3, 2, 2, padding=1, padding_mode=mode)
    with pytest.raises(ValueError, match="padding_mode"):
        StructuredConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode=mode), 2, 2)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="strided"):
        StructuredConv2d(4, 4, 3, 2, 2, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        StructuredConv2d(4, 4, 3, 2, 2, padding="full")
    with pytest.raises(ValueError, match="out_channels"):
        StructuredConv2d(4, 3, 3, 2, 2, groups=2)
    with pytest.raises(ValueError, match="reduced_channels"):
        StructuredConv2d(4, 4, 3, 5, 2)


@given(st.integers(1, 10), st.integers(1, 5), st.data())
def test_linear_equals_linear_with_composed_weight(in_features, out_features, data):
    reduced = data.draw(st.integers(1, in_features))
    torch.manual_seed(in_features * 31 + reduced)
    layer = StructuredLinear(in_features, out_features, reduced, dtype=torch.float64)
    assert layer.alpha.shape == (out_features, reduced)
    x = torch.randn(3, 2, in_features, dtype=torch.float64)
    expected = F.linear(x, layer.structure.compose(layer.alpha), layer.bias)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.to_linear()(x), expected)


def test_linear_round_trip():
    torch.manual_seed(0)
    structure = Structure(9, 1, 4, 1)
    alpha = torch.randn(5, 4, dtype=torch.float64)
    linear = nn.Linear(9, 5, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(structure.compose(alpha))
    layer = StructuredLinear.from_linear(linear, 4)
    assert layer.structure == structure and layer.reduced_features == 4
    torch.testing.assert_close(layer.alpha.detach(), alpha)
    torch.testing.assert_close(layer.to_linear().weight, linear.weight)
    x = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x))


def test_parameter_groups_equal_sgd_on_an_equalized_alpha():
    """One SGD step with structured_parameter_groups on alpha equals SGD (lr, wd) on
    alpha0 = alpha/√scale used as alpha0·√scale in the forward (the equalized learning rate)."""
    torch.manual_seed(0)
    layer = StructuredConv2d(6, 4, 3, 2, 2, padding=1, bias=False, dtype=torch.float64)
    model = nn.Sequential(layer, nn.BatchNorm2d(4, dtype=torch.float64))
    scale = layer.learning_rate_scale
    assert scale == 1 / (5 * 2 * 2)  # D = 6 - 2 + 1, Mh = Mw = 2
    groups = structured_parameter_groups(model, lr=0.1, weight_decay=0.01)
    assert [len(group["params"]) for group in groups] == [2, 1]  # BatchNorm's two | alpha
    assert groups[1]["lr"] == pytest.approx(0.1 * scale)
    assert groups[1]["weight_decay"] == pytest.approx(0.01 / scale)
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    # the oracle: plain SGD on alpha0
    alpha0 = (layer.alpha.detach() / math.sqrt(scale)).requires_grad_()
    pooled = structured_conv2d(x, alpha0 * math.sqrt(scale), layer.structure, padding=1)
    copy.deepcopy(model[1])(pooled).square().mean().backward()
    with torch.no_grad():
        expected = (alpha0 - 0.1 * (alpha0.grad + 0.01 * alpha0)) * math.sqrt(scale)
    optimizer = torch.optim.SGD(groups, lr=0.1)
    model(x).square().mean().backward()
    optimizer.step()
    torch.testing.assert_close(layer.alpha.detach(), expected)


def test_preconditioned_alpha_step_is_the_projected_step_of_w():
    """With the hook, A·grad(alpha) == P·grad(W) (dense Kronecker A, P = A A⁺ as the oracle)."""
    torch.manual_seed(0)
    layer = StructuredConv2d(6, 3, 3, 3, 2, padding=1, dtype=torch.float64)
    handles = precondition_alpha_gradients(layer)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    upstream = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    layer(x).backward(upstream)
    weight = layer.structure.compose(layer.alpha.detach()).requires_grad_()
    F.conv2d(x, weight, padding=1).backward(upstream)
    basis = np.kron(banded_ones(6, 3), np.kron(banded_ones(3, 2), banded_ones(3, 2)))
    projected = weight.grad.reshape(3, -1).numpy() @ (basis @ np.linalg.pinv(basis)).T
    step = layer.alpha.grad.reshape(3, -1).numpy() @ basis.T
    np.testing.assert_allclose(step, projected, atol=1e-10)
    for handle in handles:
        handle.remove()
    layer.alpha.grad = None
    layer(x).backward(upstream)  # without the hook: Aᵀ grad(W), not the projection
    assert not np.allclose(layer.alpha.grad.reshape(3, -1).numpy() @ basis.T, projected)
