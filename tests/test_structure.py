"""Structure: compose / decompose / residual against dense numpy algebra and torch autograd."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tvm_structconv.structure import Structure, banded_ones

from strategies import structures


def dense_matrix(structure: Structure) -> np.ndarray:
    """The dense A = B_C ⊗ B_Nh ⊗ B_Nw, built independently of the code under test."""
    (height, width), (reduced_h, reduced_w) = structure.kernel_size, structure.reduced_kernel_size

    def band(full, reduced):
        window = full - reduced + 1
        return np.array(
            [[1.0 if i <= j < i + window else 0.0 for i in range(reduced)] for j in range(full)]
        )

    return np.kron(
        np.kron(
            band(structure.group_channels, structure.group_reduced_channels),
            band(height, reduced_h),
        ),
        band(width, reduced_w),
    )


@given(structures(), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_compose_matches_dense_kronecker_and_box_definition(structure, out_channels, seed):
    out_channels *= structure.groups
    alpha = np.random.default_rng(seed).standard_normal(structure.alpha_shape(out_channels))
    weight = structure.compose(alpha)
    expected = (dense_matrix(structure) @ alpha.reshape(out_channels, -1).T).T
    np.testing.assert_allclose(weight.reshape(out_channels, -1), expected, atol=1e-12)
    # the same kernel as a sum of boxes of ones: W[o] = full 3-D conv of alpha[o] with a box
    depth, window_h, window_w = structure.pool_window
    boxes = torch.nn.functional.conv_transpose3d(
        torch.from_numpy(alpha)[:, None],
        torch.ones(1, 1, depth, window_h, window_w, dtype=torch.float64),
    )[:, 0]
    np.testing.assert_allclose(weight, boxes.numpy(), atol=1e-12)


@given(structures(), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_decompose_inverts_compose_and_projection_is_idempotent(structure, out_channels, seed):
    out_channels *= structure.groups
    rng = np.random.default_rng(seed)
    alpha = rng.standard_normal(structure.alpha_shape(out_channels))
    np.testing.assert_allclose(structure.decompose(structure.compose(alpha)), alpha, atol=1e-10)
    weight = rng.standard_normal(structure.weight_shape(out_channels))
    projected = structure.project(weight)
    np.testing.assert_allclose(structure.project(projected), projected, atol=1e-10)
    # decompose is the least-squares solution: matches the dense pseudo-inverse
    dense = np.linalg.lstsq(
        dense_matrix(structure), weight.reshape(out_channels, -1).T, rcond=None
    )[0]
    np.testing.assert_allclose(
        structure.decompose(weight).reshape(out_channels, -1), dense.T, atol=1e-9
    )


@given(structures(), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_residual_zero_for_structured_and_under_channel_scaling(structure, out_channels, seed):
    out_channels *= structure.groups
    rng = np.random.default_rng(seed)
    weight = structure.compose(rng.standard_normal(structure.alpha_shape(out_channels)))
    assert structure.residual(weight) < 1e-12
    scale = rng.uniform(0.1, 3.0, size=(out_channels, 1, 1, 1))  # what BatchNorm folding does
    assert structure.residual(weight * scale) < 1e-12
    assert structure.residual(np.zeros_like(weight)) == 0.0


@pytest.mark.parametrize(
    "structure",
    [Structure(16, 3, 8, 2), Structure(8, (3, 5), 4, (2, 3)), Structure(12, 3, 6, 1, groups=3)],
)
def test_residual_clearly_positive_for_random_kernels(structure):
    weight = np.random.default_rng(0).standard_normal(structure.weight_shape(12))
    assert structure.residual(weight) > 0.3
    # and it is exactly the norm of what the projection removes
    expected = np.linalg.norm(weight - structure.project(weight)) / np.linalg.norm(weight)
    assert structure.residual(weight) == pytest.approx(expected)


def test_torch_matches_numpy_and_is_differentiable():
    structure = Structure(8, 3, 4, 2, groups=2)
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    residual = structure.residual(weight)
    assert isinstance(residual, torch.Tensor)
    assert residual.item() == pytest.approx(structure.residual(weight.detach().numpy()))
    residual.backward()
    # gradient of ‖(I-P)W‖/‖W‖ is orthogonal-ish: a small step against it lowers the residual
    with torch.no_grad():
        stepped = weight - 0.05 * weight.grad / weight.grad.norm() * weight.norm()
    assert structure.residual(stepped).item() < residual.item()
    float32 = structure.decompose(weight.detach().float())
    assert float32.dtype == torch.float32


def test_linear_weights_are_two_dimensional():
    structure = Structure(10, 1, 4, 1)
    alpha = np.random.default_rng(1).standard_normal((3, 4))
    weight = structure.compose(alpha)
    assert weight.shape == (3, 10)
    np.testing.assert_allclose(
        weight @ np.ones(10), alpha @ np.full(4, 7.0)
    )  # D = 7 ones per column
    np.testing.assert_allclose(structure.decompose(weight), alpha, atol=1e-12)


def test_pool_window_and_cost():
    structure = Structure(64, 3, 64, 2)
    assert structure.pool_window == (1, 2, 2)
    cost = structure.cost(64, (56, 56))
    assert cost.original_macs == 64 * 64 * 9 * 56 * 56
    assert cost.structured_macs == 64 * 64 * 4 * 56 * 56
    assert cost.mac_ratio == pytest.approx(2.25)
    assert (cost.original_params, cost.structured_params) == (64 * 64 * 9, 64 * 64 * 4)
    grouped = Structure(32, (3, 5), 8, (1, 2), groups=4)
    assert grouped.pool_window == (7, 3, 4)
    assert grouped.alpha_shape(8) == (8, 2, 1, 2)


def test_banded_ones_columns_are_boxes():
    band = banded_ones(5, 3)
    assert band.shape == (5, 3)
    np.testing.assert_array_equal(band.sum(axis=0), [3, 3, 3])
    np.testing.assert_array_equal(band[:, 1], [0, 1, 1, 1, 0])


@pytest.mark.parametrize(
    "args, message",
    [
        ((8, 3, 9, 2), "reduced_channels=9 is larger than in_channels=8"),
        ((8, 3, 0, 2), "reduced_channels must be a positive int"),
        ((8, 3, 4, 4), "reduced_kernel_size=(4, 4) is larger than kernel_size=(3, 3)"),
        ((8, 3, 4, 0), "reduced_kernel_size must be >= 1"),
        ((9, 3, 3, 2, 2), "in_channels=9 is not divisible by groups=2"),
        ((8, 3, 3, 2, 2), "reduced_channels=3 is not divisible by groups=2"),
        ((8, (3, 3, 3), 4, 2), "kernel_size must be an int or a pair"),
        ((8, 3, 4, 2, 0), "groups must be a positive int"),
        ((8.0, 3, 4, 2), "in_channels must be a positive int"),
    ],
)
def test_invalid_parameters_name_the_value(args, message):
    with pytest.raises(ValueError) as error:
        Structure(*args)
    assert message in str(error.value)


def test_wrong_weight_shape_is_refused():
    structure = Structure(8, 3, 4, 2)
    with pytest.raises(
        ValueError, match=r"weight has shape \(2, 7, 3, 3\), expected \(2, 8, 3, 3\)"
    ):
        structure.decompose(np.zeros((2, 7, 3, 3)))
    with pytest.raises(ValueError, match="alpha must be 4-D"):
        structure.compose(np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="not divisible by groups=2"):
        Structure(8, 3, 4, 2, groups=2).compose(np.zeros((3, 2, 2, 2)))
