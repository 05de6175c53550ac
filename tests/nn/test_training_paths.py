"""Which way :func:`choose_method` sends a layer while training, and the paths it picks."""

import torch

from tvm_structconv.nn import StructuredLinear
from tvm_structconv.nn.functional import choose_method, structured_linear
from tvm_structconv.structure import Structure


def test_linear_layers_run_pooled_while_training():
    """A linear layer with a channel window runs pooled with or without gradients (composing
    its weight costs sliding sums over the whole ``out × C`` weight each step)."""
    structure = Structure(8, 1, 4, 1)
    alpha = torch.randn(5, 4, requires_grad=True)
    x = torch.randn(3, 8, requires_grad=True)
    assert choose_method(structure, x, alpha) == "pooled"
    with torch.no_grad():
        assert choose_method(structure, x, alpha) == "pooled"
    layer = StructuredLinear(8, 5, 4)
    out = layer(x)
    pooled = structured_linear(x, layer.alpha, layer.structure, layer.bias, method="pooled")
    assert torch.equal(out, pooled)
