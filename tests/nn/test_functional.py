"""structured_conv2d / structured_linear against torch's conv2d / linear, composed kernel."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.nn.functional import (
    structured_conv2d,
    structured_linear,
    sum_pool,
    window_sum,
    window_sum_adjoint,
)
from tvm_structconv.structure import Structure

from strategies import GRADCHECK_CONVS, structures


@given(
    structures(max_channels=6, max_kernel=4),
    st.integers(1, 3),  # out channels per group
    st.integers(1, 3),  # stride
    st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2))),
    st.integers(1, 2),  # dilation
    st.integers(0, 2**31 - 1),
)
def test_structured_conv_equals_conv_with_composed_kernel(
    structure, out_per_group, stride, padding, dilation, seed
):
    generator = torch.Generator().manual_seed(seed)
    out_channels = out_per_group * structure.groups
    alpha = torch.randn(
        structure.alpha_shape(out_channels), generator=generator, dtype=torch.float64
    )
    bias = torch.randn(out_channels, generator=generator, dtype=torch.float64)
    (height, width) = structure.kernel_size
    size = (dilation * (height - 1) + 4, dilation * (width - 1) + 5)
    x = torch.randn((2, structure.in_channels, *size), generator=generator, dtype=torch.float64)
    expected = F.conv2d(
        x,
        structure.compose(alpha),
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=structure.groups,
    )
    actual = structured_conv2d(
        x, alpha, structure, bias, stride=stride, padding=padding, dilation=dilation
    )
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@given(
    structures(max_channels=5, max_kernel=3),
    st.tuples(*[st.integers(0, 2)] * 4),
    st.integers(0, 99),
)
def test_asymmetric_padding(structure, padding, seed):
    generator = torch.Generator().manual_seed(seed)
    alpha = torch.randn(
        structure.alpha_shape(structure.groups), generator=generator, dtype=torch.float64
    )
    x = torch.randn((1, structure.in_channels, 5, 6), generator=generator, dtype=torch.float64)
    expected = F.conv2d(F.pad(x, padding), structure.compose(alpha), groups=structure.groups)
    torch.testing.assert_close(structured_conv2d(x, alpha, structure, padding=padding), expected)


def test_depthwise_is_spatial_pool_only():
    structure = Structure(6, 3, 6, 2, groups=6)
    assert structure.pool_window == (1, 2, 2)
    x = torch.randn(1, 6, 7, 7, dtype=torch.float64)
    pooled = sum_pool(x, structure)
    torch.testing.assert_close(pooled, F.avg_pool2d(x, 2, stride=1) * 4)


def test_channel_window_never_crosses_groups():
    structure = Structure(8, 1, 6, 1, groups=2)  # 4 channels per group, c = 3, D = 2
    x = torch.arange(8, dtype=torch.float64).reshape(1, 8, 1, 1)
    pooled = sum_pool(x, structure).flatten().tolist()
    assert pooled == [1, 3, 5, 9, 11, 13]  # pairs (0,1)(1,2)(2,3) | (4,5)(5,6)(6,7); never (3,4)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4), st.integers(0, 99))
def test_structured_linear_equals_linear(in_features, reduced, out_features, seed):
    reduced = min(reduced, in_features)
    structure = Structure(in_features, 1, reduced, 1)
    generator = torch.Generator().manual_seed(seed)
    alpha = torch.randn((out_features, reduced), generator=generator, dtype=torch.float64)
    bias = torch.randn(out_features, generator=generator, dtype=torch.float64)
    x = torch.randn((3, 2, in_features), generator=generator, dtype=torch.float64)
    expected = F.linear(x, structure.compose(alpha), bias)
    torch.testing.assert_close(structured_linear(x, alpha, structure, bias), expected)


def test_one_by_one_conv():
    structure = Structure(16, 1, 4, 1)
    alpha = torch.randn(8, 4, 1, 1, dtype=torch.float64)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    expected = F.conv2d(x, structure.compose(alpha), stride=2)
    torch.testing.assert_close(structured_conv2d(x, alpha, structure, stride=2), expected)


def test_gradients_flow_to_alpha_and_input():
    structure = Structure(4, 3, 2, 2)
    alpha = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, inp: structured_conv2d(inp, a, structure, padding=1, dilation=2), (alpha, x)
    )


def test_bad_inputs_are_refused():
    structure = Structure(4, 3, 2, 2)
    with pytest.raises(ValueError, match=r"input must be \(B, 4, H, W\)"):
        structured_conv2d(torch.zeros(1, 5, 6, 6), torch.zeros(1, 2, 2, 2), structure)
    with pytest.raises(ValueError, match="alpha has shape"):
        structured_conv2d(torch.zeros(1, 4, 6, 6), torch.zeros(1, 3, 2, 2), structure)
    with pytest.raises(ValueError, match="padding must be"):
        structured_conv2d(
            torch.zeros(1, 4, 6, 6), torch.zeros(1, 2, 2, 2), structure, padding=(1, 2, 3)
        )
    with pytest.raises(ValueError, match="1x1 structure"):
        structured_linear(torch.zeros(2, 4), torch.zeros(1, 2, 2, 2), structure)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 9),  # length
    st.integers(1, 9),  # window
    st.integers(1, 3),  # dilation
    st.integers(0, 99),
)
def test_window_sum_against_numpy_and_its_adjoint(length, size, dilation, seed):
    length += dilation * (size - 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, length, 3))
    expected = sum(
        x[:, k * dilation : length - dilation * (size - 1) + k * dilation] for k in range(size)
    )
    summed = window_sum(torch.from_numpy(x), 1, size, dilation)
    np.testing.assert_allclose(summed.numpy(), expected, rtol=1e-12, atol=1e-12)
    # the adjoint: <S x, y> == <x, S* y> for every y
    y = torch.from_numpy(rng.standard_normal(summed.shape))
    back = window_sum_adjoint(y, 1, size, dilation)
    assert back.shape == x.shape
    torch.testing.assert_close((summed * y).sum(), (torch.from_numpy(x) * back).sum())
    # both differentiable, each with the other as its backward
    inputs = (torch.from_numpy(x[:1, :, :1]).requires_grad_(),)
    assert torch.autograd.gradcheck(lambda t: window_sum(t, 1, size, dilation), inputs)
    inputs = (y[:1, :, :1].clone().requires_grad_(),)
    assert torch.autograd.gradcheck(lambda t: window_sum_adjoint(t, 1, size, dilation), inputs)


@settings(max_examples=6, deadline=None)
@given(*GRADCHECK_CONVS, st.integers(0, 99))
def test_fast_backward_passes_gradcheck(structure, stride, padding, dilation, channels_last, seed):
    generator = torch.Generator().manual_seed(seed)
    out_channels = structure.groups
    alpha = torch.randn(
        structure.alpha_shape(out_channels), generator=generator, dtype=torch.float64
    )
    bias = torch.randn(out_channels, generator=generator, dtype=torch.float64)
    size = [dilation * (k - 1) + 2 for k in structure.kernel_size]
    x = torch.randn((1, structure.in_channels, *size), generator=generator, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inputs = tuple(t.requires_grad_() for t in (x, alpha, bias))
    assert torch.autograd.gradcheck(
        lambda x, alpha, bias: structured_conv2d(
            x, alpha, structure, bias, stride=stride, padding=padding, dilation=dilation
        ),
        inputs,
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_equal_conv2d_on_the_composed_kernel(channels_last):
    """Input, alpha and bias gradients against conv2d with A·alpha (float32, c < C)."""
    torch.manual_seed(0)
    structure = Structure(12, 3, 5, 2)  # channel window D = 8, spatial window 2x2
    x = torch.randn(3, 12, 9, 9)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    upstream = torch.randn(3, 6, 9, 9)
    fast = [torch.randn(structure.alpha_shape(6)), torch.randn(6), x]
    fast = [t.clone().requires_grad_() for t in fast]
    oracle = [t.detach().clone().requires_grad_() for t in fast]
    alpha, bias, inp = fast
    structured_conv2d(inp, alpha, structure, bias, padding=1).backward(upstream)
    alpha, bias, inp = oracle
    F.conv2d(inp, structure.compose(alpha), bias, padding=1).backward(upstream)
    for mine, theirs in zip(fast, oracle):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-3)
