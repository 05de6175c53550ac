"""How structured layers print, and the optimizer groups' defaults and refusals (survivors of a
mutation run of nn/layers.py)."""

import pytest
import torch.nn as nn

from tvm_structconv.nn import StructuredConv2d
from tvm_structconv.nn.layers import structured_parameter_groups


def test_repr_names_only_what_differs_from_the_defaults():
    plain = StructuredConv2d(4, 6, 3, 2, 2, padding=1)
    assert plain.extra_repr() == (
        "4, 6, kernel_size=(3, 3), reduced_channels=2, reduced_kernel_size=(2, 2), "
        "stride=(1, 1), padding=(1, 1)"
    )
    full = StructuredConv2d(4, 6, 3, 2, 2, dilation=(1, 2), groups=2, bias=False)
    assert full.extra_repr().endswith("padding=(0, 0), dilation=(1, 2), groups=2, bias=False")
    assert "dilation=(2, 1)" in StructuredConv2d(4, 6, 3, 2, 2, dilation=(2, 1)).extra_repr()


def test_parameter_groups_default_to_no_weight_decay_and_refuse_other_optimizers():
    model = nn.Sequential(StructuredConv2d(4, 6, 3, 2, 2), nn.Conv2d(6, 2, 1))
    groups = structured_parameter_groups(model, lr=0.1)
    assert [group["weight_decay"] for group in groups] == [0.0, 0.0]
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam', got 'lion'"):
        structured_parameter_groups(model, lr=0.1, optimizer="lion")


def test_linear_layers_keep_or_drop_the_bias_both_ways():
    from tvm_structconv.nn import StructuredLinear

    assert StructuredLinear(6, 4, 3).bias is not None  # a bias by default, like nn.Linear
    assert "bias=True" in StructuredLinear(6, 4, 3).extra_repr()
    without = StructuredLinear.from_linear(nn.Linear(6, 4, bias=False), 3)
    assert without.bias is None and "bias=False" in without.extra_repr()
    assert without.to_linear().bias is None
    with_bias = StructuredLinear.from_linear(nn.Linear(6, 4), 3)
    assert with_bias.to_linear().bias is not None


def test_a_new_linear_layer_initializes_its_bias_like_nn_linear():
    from tvm_structconv.nn import StructuredLinear

    bias = StructuredLinear(6, 400, 3).bias.detach()
    bound = 1 / 6**0.5  # uniform in ±1/√(in_features)
    assert float(bias.abs().max()) <= bound and float(bias.std()) > bound / 4


def test_structured_linear_names_a_wrong_input_or_alpha():
    import torch

    from tvm_structconv.nn.functional import structured_linear
    from tvm_structconv.structure import Structure

    structure = Structure(6, 1, 3, 1)
    with pytest.raises(ValueError, match=r"^input has 5 features, expected 6$"):
        structured_linear(torch.ones(2, 5), torch.ones(4, 3), structure)
    with pytest.raises(
        ValueError, match=r"^alpha has shape \(4, 2\), expected \(out_features, 3\)$"
    ):
        structured_linear(torch.ones(2, 6), torch.ones(4, 2), structure)
