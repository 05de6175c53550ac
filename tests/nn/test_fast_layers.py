"""The two ways of computing a structured layer (pooled, composed): values and gradients.

Both against ``torch.autograd.gradcheck`` (float64) and against ``nn.Conv2d`` / ``nn.Linear``
holding the composed kernel ``A · alpha``, over drawn shapes (odd sizes, strides, asymmetric
padding, dilation, groups, channel counts).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.nn import StructuredConv2d, StructuredLinear
from tvm_structconv.nn.functional import (
    choose_method,
    compose_kernel,
    method_pieces,
    structured_conv2d,
    structured_linear,
)
from tvm_structconv.structure import Structure, banded_ones

from strategies import GRADCHECK_CONVS, structures

METHODS = ("pooled", "composed")
#: every method structured_conv2d takes: the two names and the mixed triples
CONV_METHODS = st.one_of(st.sampled_from(METHODS), st.tuples(*[st.sampled_from(METHODS)] * 3))


def _dense_basis(structure: Structure) -> np.ndarray:
    """``A`` of one group as a dense ``C·kh·kw × c·nh·nw`` matrix."""
    (height, width), (reduced_h, reduced_w) = structure.kernel_size, structure.reduced_kernel_size
    return np.kron(
        banded_ones(structure.group_channels, structure.group_reduced_channels),
        np.kron(banded_ones(height, reduced_h), banded_ones(width, reduced_w)),
    )


@given(structures(max_channels=5, max_kernel=4), st.integers(1, 3), st.integers(0, 99))
def test_compose_kernel_is_a_and_its_backward_is_a_transpose(structure, out_channels, seed):
    generator = torch.Generator().manual_seed(seed)
    shape = structure.alpha_shape(out_channels)
    alpha = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = compose_kernel(alpha, structure)
    basis = torch.from_numpy(_dense_basis(structure))
    expected = (alpha.detach().reshape(out_channels, -1) @ basis.T).reshape(weight.shape)
    torch.testing.assert_close(weight, expected, rtol=0, atol=1e-12)
    upstream = torch.randn(weight.shape, generator=generator, dtype=torch.float64)
    weight.backward(upstream)
    expected_grad = (upstream.reshape(out_channels, -1) @ basis).reshape(shape)
    torch.testing.assert_close(alpha.grad, expected_grad, rtol=0, atol=1e-12)


@given(
    structures(max_channels=4, max_kernel=4),
    st.integers(1, 3),  # out channels per group
    st.tuples(st.integers(1, 3), st.integers(1, 3)),  # stride
    st.tuples(*[st.integers(0, 2)] * 4),  # (left, right, top, bottom)
    st.tuples(st.integers(1, 2), st.integers(1, 2)),  # dilation
    st.tuples(st.integers(0, 4), st.integers(0, 4)),  # extra input rows, columns
    CONV_METHODS,
    st.integers(0, 2**31 - 1),
)
def test_gradients_equal_conv2d_on_the_composed_kernel(
    structure, out_per_group, stride, padding, dilation, extra, method, seed
):
    """Output and the input, alpha and bias gradients of each method against ``F.conv2d``
    with ``A · alpha`` (float64)."""
    generator = torch.Generator().manual_seed(seed)
    out_channels = out_per_group * structure.groups
    size = [d * (k - 1) + 1 + e for d, k, e in zip(dilation, structure.kernel_size, extra)]

    def draw(*shape):
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    mine = [draw(2, structure.in_channels, *size), draw(*structure.alpha_shape(out_channels))]
    mine = [t.requires_grad_() for t in mine + [draw(out_channels)]]
    oracle = [t.detach().clone().requires_grad_() for t in mine]
    x, alpha, bias = mine
    out = structured_conv2d(
        x, alpha, structure, bias, stride=stride, padding=padding, dilation=dilation, method=method
    )
    x, alpha, bias = oracle
    weight = torch.from_numpy(_dense_basis(structure)) @ alpha.reshape(out_channels, -1).T
    weight = weight.T.reshape(structure.weight_shape(out_channels))
    expected = F.conv2d(
        F.pad(x, padding), weight, bias, stride=stride, dilation=dilation, groups=structure.groups
    )
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    upstream = draw(*out.shape)
    out.backward(upstream)
    expected.backward(upstream)
    for got, want in zip(mine, oracle):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)


@settings(max_examples=12)
@given(*GRADCHECK_CONVS, CONV_METHODS, st.integers(0, 99))
def test_each_method_passes_gradcheck(
    structure, stride, padding, dilation, channels_last, method, seed
):
    generator = torch.Generator().manual_seed(seed)
    out_channels = 2 * structure.groups
    alpha = torch.randn(structure.alpha_shape(out_channels), generator=generator).double()
    bias = torch.randn(out_channels, generator=generator).double()
    size = [dilation * (k - 1) + 2 for k in structure.kernel_size]
    x = torch.randn((1, structure.in_channels, *size), generator=generator).double()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    inputs = tuple(t.requires_grad_() for t in (x, alpha, bias))
    assert torch.autograd.gradcheck(
        lambda x, alpha, bias: structured_conv2d(
            x,
            alpha,
            structure,
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
            method=method,
        ),
        inputs,
    )


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.sampled_from(METHODS), st.data())
def test_linear_gradients_equal_linear_on_the_composed_weight(
    in_features, out_features, batch, method, data
):
    reduced = data.draw(st.integers(1, in_features))
    structure = Structure(in_features, 1, reduced, 1)
    generator = torch.Generator().manual_seed(in_features * 100 + reduced)
    mine = [
        torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in ((batch, 2, in_features), (out_features, reduced), (out_features,))
    ]
    oracle = [t.detach().clone().requires_grad_() for t in mine]
    out = structured_linear(mine[0], mine[1], structure, mine[2], method=method)
    basis = torch.tensor(banded_ones(in_features, reduced))
    expected = F.linear(oracle[0], oracle[1] @ basis.T, oracle[2])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    out.backward(upstream)
    expected.backward(upstream)
    for got, want in zip(mine, oracle):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x, a: structured_linear(x, a, structure, method=method),
        (mine[0].detach()[:1].requires_grad_(), mine[1].detach().requires_grad_()),
    )


def test_layers_compute_with_their_method():
    """The same layer in each method: equal outputs and gradients, and the method is used."""
    torch.manual_seed(0)
    layers = {
        method: StructuredConv2d(6, 4, 3, 6, 2, padding=1, dtype=torch.float64, method=method)
        for method in METHODS
    }
    layers["composed"].load_state_dict(layers["pooled"].state_dict())
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    grads = []
    for layer in layers.values():
        layer(x).square().sum().backward()
        grads.append((layer.alpha.grad, layer.bias.grad))
    torch.testing.assert_close(grads[0], grads[1])
    assert "method='composed'" in repr(layers["composed"])
    with pytest.raises(ValueError, match="method must be one of"):
        StructuredConv2d(6, 4, 3, 6, 2, method="fast")
    with pytest.raises(ValueError, match="method must be one of"):
        StructuredLinear(6, 4, 3, method="fast")
    with pytest.raises(ValueError, match="method must be one of"):
        structured_conv2d(x, layers["pooled"].alpha, layers["pooled"].structure, method="fast")
    with pytest.raises(ValueError, match="method must be one of"):
        StructuredConv2d(6, 4, 3, 6, 2, method=("pooled", "composed"))


def test_method_pieces():
    assert method_pieces("pooled") == (True, True, True)
    assert method_pieces("composed") == (False, False, False)
    assert method_pieces(("composed", "composed", "pooled")) == (False, False, True)
    with pytest.raises(ValueError, match="triple"):
        method_pieces(("pooled", "auto", "pooled"))


@pytest.mark.parametrize("in_channels, size", [(128, 28), (64, 56), (512, 7)])
def test_choose_method_follows_the_documented_rule(in_channels, size):
    structure = Structure(in_channels, 3, in_channels, 2)
    alpha = torch.zeros(structure.alpha_shape(4), requires_grad=True)
    x = torch.zeros(1, in_channels, size, size)
    assert choose_method(structure, x, alpha) == "pooled"
    channel_window = Structure(in_channels, 3, in_channels // 2, 2)
    alpha = torch.zeros(channel_window.alpha_shape(4), requires_grad=True)
    assert choose_method(channel_window, x, alpha) == "composed"
    with torch.no_grad():
        assert choose_method(channel_window, x, alpha) == "pooled"
    assert choose_method(channel_window, x, alpha.detach()) == "pooled"
