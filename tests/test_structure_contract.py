"""The small print of ``Structure``: dtypes kept, the cost formula, what it refuses and how it
prints (the survivors of a mutation run of structure.py, see CONTRIBUTING)."""

import numpy as np
import pytest
import torch

from tvm_structconv.structure import Structure, as_pair


@pytest.mark.parametrize(
    "alpha, dtype",
    [
        (np.ones((2, 2, 2, 2), np.float32), np.float32),
        (np.ones((2, 2, 2, 2), np.int64), np.float64),
        (torch.ones(2, 2, 2, 2, dtype=torch.float32), torch.float32),
        (torch.ones(2, 2, 2, 2, dtype=torch.float16), torch.float16),
    ],
)
def test_compose_keeps_a_float_dtype_and_makes_integers_float64(alpha, dtype):
    structure = Structure(4, 3, 2, 2)
    weight = structure.compose(alpha)
    assert weight.dtype == dtype
    assert weight.shape == (2, 4, 3, 3)
    assert float(weight[0, 1, 1, 1]) == 8.0  # every middle entry sums 2 x 2 x 2 ones


def test_cost_counts_macs_params_and_pool_adds():
    structure = Structure(8, 3, 4, 2)  # pool window (5, 2, 2): three pooled axes
    cost = structure.cost(6, output_size=(3, 4), batch=2)
    pixels = 2 * 3 * 4
    assert cost.original_params == 6 * 8 * 3 * 3
    assert cost.structured_params == 6 * 4 * 2 * 2
    assert cost.original_macs == 6 * 8 * 3 * 3 * pixels
    assert cost.structured_macs == 6 * 4 * 2 * 2 * pixels
    assert cost.pool_adds == 2 * 3 * 4 * pixels
    assert cost.mac_ratio == pytest.approx(72 / 16)
    # a channel-only structure pools one axis; the trivial one none
    assert Structure(8, 3, 4, 3).cost(6).pool_adds == 2 * 1 * 4
    assert Structure(8, 3, 8, 3).cost(6).pool_adds == 0
    assert Structure(8, 3, 4, 2).cost(6).original_macs == 6 * 8 * 9  # one pixel by default


def test_str_names_every_size_and_groups_only_when_grouped():
    assert str(Structure(8, (3, 5), 4, (2, 3))) == "Structure(C=8, N=3x5 -> c=4, n=2x3)"
    assert str(Structure(8, 3, 4, 2, groups=2)) == "Structure(C=8, N=3x3 -> c=4, n=2x2, groups=2)"


@pytest.mark.parametrize(
    "tensor, message",
    [
        ([[1.0]], "must be a numpy array or torch tensor, got <class 'list'>"),
        (np.ones((2, 4)), "must be 4-D \\(or 2-D for a 1x1/Linear layer\\), got shape \\(2, 4\\)"),
        (np.ones((2, 4, 3)), "must be 4-D"),
        (np.ones((2, 4, 3, 2)), "has shape \\(2, 4, 3, 2\\), expected \\(2, 4, 3, 3\\)"),
    ],
)
def test_decompose_refuses_what_is_not_a_weight_of_the_layer(tensor, message):
    with pytest.raises(ValueError, match=f"weight {message}"):
        Structure(4, 3, 2, 2).decompose(tensor)


def test_a_grouped_weight_needs_outputs_divisible_by_groups():
    structure = Structure(4, 3, 2, 2, groups=2)
    with pytest.raises(ValueError, match="alpha has 3 output channels, not divisible by groups=2"):
        structure.compose(np.ones((3, 1, 2, 2)))
    assert structure.compose(np.ones((4, 1, 2, 2))).shape == (4, 2, 3, 3)


def test_a_linear_weight_is_2d_only_for_a_1x1_structure():
    linear = Structure(6, 1, 3, 1)
    assert linear.compose(np.ones((5, 3))).shape == (5, 6)
    assert linear.decompose(np.ones((5, 6))).shape == (5, 3)
    with pytest.raises(ValueError, match="alpha has shape \\(5, 4\\), expected \\(5, 3\\)"):
        linear.compose(np.ones((5, 4)))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((True, 3, 1, 2), "in_channels must be a positive int, got True"),
        ((4, 3, 0, 2), "reduced_channels must be a positive int, got 0"),
        ((4, 3, 2, 2, 0), "groups must be a positive int, got 0"),
        ((4.0, 3, 2, 2), "in_channels must be a positive int, got 4.0"),
        ((4, (3, 0), 2, (2, 0)), "kernel_size must be >= 1, got \\(3, 0\\)"),
        ((4, 3, 2, (2, 0)), "reduced_kernel_size must be >= 1, got \\(2, 0\\)"),
        ((4, 3, 3, 2, 2), "reduced_channels=3 is not divisible by groups=2"),
        ((3, 3, 2, 2, 2), "in_channels=3 is not divisible by groups=2"),
        ((4, 3, 6, 2), "reduced_channels=6 is larger than in_channels=4"),
        ((4, (3, 2), 2, (2, 3)), "is larger than kernel_size=\\(3, 2\\) along w"),
        ((4, (2, 3), 2, (3, 2)), "is larger than kernel_size=\\(2, 3\\) along h"),
    ],
)
def test_invalid_structures_name_the_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        Structure(*arguments)


def test_numpy_integers_are_ints():
    structure = Structure(np.int64(4), np.int32(3), np.int64(2), (np.int64(2), 2), np.int64(1))
    assert structure == Structure(4, 3, 2, 2)
    assert all(type(v) is int for v in (structure.in_channels, *structure.kernel_size))


@pytest.mark.parametrize("value", [True, (1, True), (1, 2, 3), "22", (1.0, 2)])
def test_as_pair_refuses_what_is_not_one_or_two_ints(value):
    with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
        as_pair(value, "stride")


def test_as_pair():
    assert as_pair(3, "k") == (3, 3)
    assert as_pair([2, np.int64(5)], "k") == (2, 5)
    assert type(as_pair(np.int64(2), "k")[0]) is int


def test_residual_of_a_zero_kernel_is_zero_and_a_torch_residual_has_a_gradient():
    structure = Structure(4, 3, 2, 2)
    assert structure.residual(np.zeros((2, 4, 3, 3))) == 0.0
    zero = structure.residual(torch.zeros(2, 4, 3, 3))
    assert float(zero) == 0.0 and not torch.isnan(zero)
    weight = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    residual = structure.residual(weight)
    residual.backward()
    value = residual.item()
    assert 0 < value < 1 and weight.grad is not None
    assert value == pytest.approx(structure.residual(weight.detach().numpy()))


def test_pair_arguments_are_named_in_their_errors():
    with pytest.raises(ValueError, match="^reduced_kernel_size must be an int or a pair"):
        Structure(4, 3, 2, (1, 2, 3))
    with pytest.raises(ValueError, match="^kernel_size must be an int or a pair"):
        Structure(4, "3", 2, 2)
    with pytest.raises(ValueError, match="^output_size must be an int or a pair"):
        Structure(4, 3, 2, 2).cost(4, output_size=(1, 2, 3))


def test_the_residual_of_a_small_weight_is_relative():
    structure = Structure(4, 3, 2, 2)
    weight = np.random.default_rng(0).standard_normal((2, 4, 3, 3))
    assert structure.residual(1e-3 * weight) == pytest.approx(structure.residual(weight))
    assert structure.residual(1e-3 * weight) > 0.1


def test_the_cached_banded_matrices_are_read_only():
    from tvm_structconv.structure import banded_ones

    band = banded_ones(5, 3)
    assert band.dtype == np.float64 and band.tolist()[4] == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="read-only"):
        band[0, 0] = 7.0  # a caller writing into it would corrupt every later use
