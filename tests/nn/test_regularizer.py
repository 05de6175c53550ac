"""StructuralRegularizer: the paper's Eq. 3 against a dense-projector oracle, and its gradient."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from tvm_structconv.nn import StructuralRegularizer
from tvm_structconv.plan import Plan
from tvm_structconv.structure import banded_ones


def _model(dtype=torch.float64) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 6, 1),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
    ).to(dtype)


PLAN = Plan.parse("3x3:c=C/2,n=2,grouped=yes;linear:c=C/2")


def _dense_residual(weight: np.ndarray, reduced_channels: int, reduced_kernel: int) -> float:
    """``‖(I − A A⁺) vec W‖ / ‖W‖`` with the dense Kronecker matrix ``A`` (groups = 1)."""
    out_channels, channels, kernel, _ = weight.shape
    basis = np.kron(
        banded_ones(channels, reduced_channels),
        np.kron(banded_ones(kernel, reduced_kernel), banded_ones(kernel, reduced_kernel)),
    )
    projector = basis @ np.linalg.pinv(basis)
    flat = weight.reshape(out_channels, -1)
    return float(np.linalg.norm(flat - flat @ projector.T) / np.linalg.norm(flat))


def _structure_weights(model: nn.Module, regularizer: StructuralRegularizer) -> None:
    """Give every regularized layer a random structured weight ``A · alpha``."""
    with torch.no_grad():
        for name, structure in regularizer.structures.items():
            weight = model.get_submodule(name).weight
            alpha = torch.randn(structure.alpha_shape(weight.shape[0]), dtype=weight.dtype)
            if weight.dim() == 2:
                alpha = alpha[:, :, 0, 0]
            weight.copy_(structure.compose(alpha))


def test_planned_layers():
    regularizer = StructuralRegularizer(_model(), PLAN)
    assert sorted(regularizer.structures) == ["0", "2", "6"]
    assert regularizer.structures["2"].groups == 2


def test_zero_on_structured_weights():
    torch.manual_seed(0)
    model = _model()
    regularizer = StructuralRegularizer(model, PLAN, strength=3.0)
    _structure_weights(model, regularizer)
    assert regularizer().item() < 1e-12


def test_positive_on_random_weights_and_equals_dense_oracle():
    torch.manual_seed(0)
    model = _model()
    regularizer = StructuralRegularizer(model, PLAN, strength=0.5)
    residuals = {name: value.item() for name, value in regularizer.residuals().items()}
    assert all(value > 0.1 for value in residuals.values())
    weight = model[0].weight.detach().numpy()
    assert residuals["0"] == pytest.approx(_dense_residual(weight, 1, 2), rel=1e-9)
    linear = model[6].weight.detach().numpy()[:, :, None, None]
    assert residuals["6"] == pytest.approx(_dense_residual(linear, 48, 1), rel=1e-9)
    assert regularizer().item() == pytest.approx(0.5 * sum(residuals.values()), rel=1e-12)


@given(st.integers(1, 6), st.integers(1, 4), st.integers(2, 4), st.data())
def test_matches_dense_oracle_on_random_convs(channels, out_channels, kernel, data):
    reduced_channels = data.draw(st.integers(1, channels))
    reduced_kernel = data.draw(st.integers(1, kernel))
    torch.manual_seed(channels * 100 + kernel * 10 + reduced_kernel)
    model = nn.Sequential(nn.Conv2d(channels, out_channels, kernel, dtype=torch.float64))
    plan = Plan(layers={"0": (reduced_channels, (reduced_kernel, reduced_kernel))})
    if (reduced_channels, reduced_kernel) == (channels, kernel):
        with pytest.raises(ValueError, match="no layer"):
            StructuralRegularizer(model, plan)
        return
    value = StructuralRegularizer(model, plan)().item()
    expected = _dense_residual(model[0].weight.detach().numpy(), reduced_channels, reduced_kernel)
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_gradient_step_reduces_the_residual():
    torch.manual_seed(0)
    model = _model()
    regularizer = StructuralRegularizer(model, PLAN)
    before = {name: value.item() for name, value in regularizer.residuals().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    regularizer().backward()
    assert model[4].weight.grad is None  # the 1x1 conv is not planned
    assert all(model[i].bias.grad is None for i in (0, 2, 6))
    optimizer.step()
    after = {name: value.item() for name, value in regularizer.residuals().items()}
    assert all(after[name] < before[name] for name in before)


def test_gradient_is_the_analytic_gradient_of_eq_3():
    """grad r = (I − P)W / (‖W‖·‖(I − P)W‖) − r·W / ‖W‖², with P the dense projector."""
    torch.manual_seed(0)
    model = _model()
    regularizer = StructuralRegularizer(model, Plan.parse("3x3:c=C/2,n=2"))
    regularizer().backward()
    weight = model[0].weight.detach().numpy()
    flat = weight.reshape(weight.shape[0], -1)
    basis = np.kron(banded_ones(3, 1), np.kron(banded_ones(3, 2), banded_ones(3, 2)))
    complement = flat - flat @ (basis @ np.linalg.pinv(basis)).T
    norm, residual = np.linalg.norm(flat), np.linalg.norm(complement) / np.linalg.norm(flat)
    expected = complement / (norm * np.linalg.norm(complement)) - residual * flat / norm**2
    np.testing.assert_allclose(
        model[0].weight.grad.numpy().reshape(flat.shape), expected, atol=1e-12
    )


def test_finite_gradient_at_structured_weights():
    torch.manual_seed(0)
    model = _model(torch.float32)
    regularizer = StructuralRegularizer(model, PLAN)
    _structure_weights(model, regularizer)
    regularizer().backward()
    assert all(torch.isfinite(model[i].weight.grad).all() for i in (0, 2, 6))


def test_training_with_the_regularizer_drives_the_residual_down():
    torch.manual_seed(0)
    model = _model(torch.float32)
    regularizer = StructuralRegularizer(model, PLAN, strength=1.0)
    x, y = torch.randn(16, 3, 4, 4), torch.randint(0, 5, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = sum(value.item() for value in regularizer.residuals().values())
    for _ in range(100):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + regularizer()
        loss.backward()
        optimizer.step()
    end = sum(value.item() for value in regularizer.residuals().values())
    assert end < 0.2 * start


def test_follows_the_model_after_load_state_dict():
    torch.manual_seed(0)
    model = _model()
    regularizer = StructuralRegularizer(model, PLAN)
    structured = _model()
    _structure_weights(structured, regularizer)
    model.load_state_dict(structured.state_dict())
    assert regularizer().item() < 1e-12


def test_invalid_arguments():
    with pytest.raises(ValueError, match="strength"):
        StructuralRegularizer(_model(), PLAN, strength=-1.0)
    with pytest.raises(ValueError, match="no layer"):
        StructuralRegularizer(_model(), Plan.parse("5x5:n=2"))


@pytest.mark.parametrize("plan", ["3x3:c=C,n=2;linear:c=C/2", "3x3:c=C/2,n=2;1x1:c=C/2"])
def test_cached_batched_residuals_equal_structure_residual(plan):
    """Value and gradient, per layer, against Structure.residual: layers of equal shape
    batched, identity factors skipped, the cache reused across calls and rebuilt by dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Conv2d(6, 6, 3, padding=1) for _ in range(3)],  # three of one shape: one batch
        nn.Conv2d(6, 4, 3, padding=1),
        nn.Conv2d(4, 4, 1),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 6),
    ).double()
    regularizer = StructuralRegularizer(model, Plan.parse(plan), strength=0.5)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float64, 1e-12), (torch.float32, 1e-5)):
        model.to(dtype)
        model.zero_grad()
        regularizer().backward()
        got = {
            name: model.get_submodule(name).weight.grad.clone() for name in regularizer.structures
        }
        for name, structure in regularizer.structures.items():
            weight = model.get_submodule(name).weight.detach().clone().requires_grad_()
            expected = structure.residual(weight)
            (0.5 * expected).backward()
            actual = regularizer.residuals()[name]
            assert actual.dtype == dtype
            torch.testing.assert_close(actual, expected.detach(), rtol=tolerance, atol=tolerance)
            torch.testing.assert_close(got[name], weight.grad, rtol=tolerance, atol=tolerance)
