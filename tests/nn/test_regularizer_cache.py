"""StructuralRegularizer's caching, batching and closed-form gradient change nothing.

Against an uncached oracle computed independently: the dense projector ``A A⁺`` built from
``np.kron`` and ``np.linalg.pinv``, differentiated by autograd, per layer.
"""

import numpy as np
import torch
import torch.nn as nn
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tvm_structconv.nn import StructuralRegularizer
from tvm_structconv.plan import Plan
from tvm_structconv.structure import banded_ones


def _dense_complement(channels: int, kernel: int, reduced: int, reduced_kernel: int):
    """``I − A A⁺`` as a dense float64 tensor (groups = 1)."""
    basis = np.kron(
        banded_ones(channels, reduced),
        np.kron(banded_ones(kernel, reduced_kernel), banded_ones(kernel, reduced_kernel)),
    )
    return torch.tensor(np.eye(len(basis)) - basis @ np.linalg.pinv(basis))


def _oracle(weight: torch.Tensor, complement: torch.Tensor):
    """``r(W)`` and ``∇r(W)`` through the dense complement, by autograd."""
    weight = weight.detach().double().clone().requires_grad_()
    flat = weight.reshape(weight.shape[0], -1)
    residual = torch.linalg.vector_norm(flat @ complement.T) / torch.linalg.vector_norm(flat)
    residual.backward()
    return residual.detach(), weight.grad


@settings(max_examples=25)
@given(
    st.integers(1, 6),  # input channels
    st.integers(1, 4),  # output channels
    st.integers(1, 4),  # kernel size
    st.integers(1, 3),  # layers of that shape (stacked into one batch)
    st.data(),
)
def test_value_and_gradient_equal_the_uncached_dense_oracle(
    channels, out_channels, kernel, repeats, data
):
    reduced = data.draw(st.integers(1, channels), label="c")
    reduced_kernel = data.draw(st.integers(1, kernel), label="n")
    assume((reduced, reduced_kernel) != (channels, kernel))  # the plan would skip the layer
    torch.manual_seed(channels * 1000 + out_channels * 100 + kernel * 10 + repeats)
    model = nn.Sequential(
        *[nn.Conv2d(channels, out_channels, kernel) for _ in range(repeats)],
        nn.Conv2d(channels, out_channels + 1, kernel),  # another shape: its own batch
    ).double()
    plan = Plan(layers={str(i): (reduced, (reduced_kernel,) * 2) for i in range(repeats + 1)})
    regularizer = StructuralRegularizer(model, plan, strength=0.7)
    complement = _dense_complement(channels, kernel, reduced, reduced_kernel)
    # twice in float64 (the cached factors reused), then float32 (rebuilt for the dtype)
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float64, 1e-10), (torch.float32, 1e-4)):
        model.to(dtype)
        model.zero_grad()
        total = regularizer()
        total.backward()
        expected_total = 0.0
        for index, layer in enumerate(model):
            value, gradient = _oracle(layer.weight, complement)
            expected_total += 0.7 * value
            torch.testing.assert_close(
                regularizer.residuals()[str(index)].double(), value, rtol=tolerance, atol=tolerance
            )
            torch.testing.assert_close(
                layer.weight.grad.double(), 0.7 * gradient, rtol=tolerance, atol=tolerance
            )
        torch.testing.assert_close(total.double(), expected_total, rtol=tolerance, atol=tolerance)
        with torch.no_grad():  # an optimizer step: the next call reads the new weights
            for layer in model:
                layer.weight.mul_(1.5).add_(0.1)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3),  # groups
    st.integers(2, 9),  # input channels per group
    st.integers(1, 3),  # output channels per group
    st.integers(1, 3),  # kernel size (1: a 1x1 conv, or a Linear when `linear`)
    st.booleans(),  # a Linear layer instead of the conv (groups and kernel ignored)
    st.booleans(),  # channels-last weights
    st.data(),
)
def test_channel_windows_equal_the_dense_oracle(
    groups, channels, out_per_group, kernel, linear, channels_last, data
):
    """``c < C`` (the closed-form periodic complement of the channel projector), per group,
    for convs in either memory format and linear layers, and a second backward through the
    same graph (``retain_graph``) gives the same gradient."""
    reduced = data.draw(st.integers(1, channels - 1), label="c")
    reduced_kernel = data.draw(st.integers(1, kernel), label="n")
    torch.manual_seed(groups * 1000 + channels * 100 + reduced * 10 + kernel)
    if linear:
        groups, kernel, reduced_kernel = 1, 1, 1
        layer = nn.Linear(channels, out_per_group + 1).double()
        plan = Plan(layers={"": (reduced, (1, 1))})
    else:
        layer = nn.Conv2d(channels * groups, out_per_group * groups, kernel, groups=groups).double()
        if channels_last:
            layer = layer.to(memory_format=torch.channels_last)
        plan = Plan(layers={"": (reduced * groups, (reduced_kernel,) * 2)})
    regularizer = StructuralRegularizer(layer, plan, strength=1.0)
    value, gradient = _oracle(
        layer.weight, _dense_complement(channels, kernel, reduced, reduced_kernel)
    )
    total = regularizer()
    torch.testing.assert_close(total, value, rtol=1e-10, atol=1e-10)
    total.backward(retain_graph=True)
    torch.testing.assert_close(layer.weight.grad, gradient, rtol=1e-10, atol=1e-10)
    layer.weight.grad = None
    total.backward()
    torch.testing.assert_close(layer.weight.grad, gradient, rtol=1e-10, atol=1e-10)


def test_a_wide_channel_window_in_float32():
    """128 → 64 channels (``D = 65``, two channels in most residue classes), float32 within
    ``1e-5`` of the float64 oracle."""
    torch.manual_seed(0)
    layer = nn.Conv2d(128, 8, 3, bias=False)
    regularizer = StructuralRegularizer(layer, Plan.parse("3x3:c=C/2,n=2"))
    regularizer().backward()
    value, gradient = _oracle(layer.weight, _dense_complement(128, 3, 64, 2))
    torch.testing.assert_close(regularizer().double(), value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad.double(), gradient, rtol=1e-4, atol=1e-7)
