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
