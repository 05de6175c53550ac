"""``detect`` at the edges the mutation run found unguarded: any scale of weight, torch tensors
that require grad, and a residual just under / over the tolerance."""

import numpy as np
import pytest
import torch

from tvm_structconv.manifest import detect
from tvm_structconv.structure import Structure

STRUCTURE = Structure(8, 3, 4, 2)


def near_structured(residual: float, scale: float, seed: int = 0) -> np.ndarray:
    """A weight of ``STRUCTURE`` whose relative residual is ``residual``, times ``scale``."""
    rng = np.random.default_rng(seed)
    shape = STRUCTURE.weight_shape(6)
    structured = STRUCTURE.project(rng.standard_normal(shape))
    noise = rng.standard_normal(shape)
    noise -= STRUCTURE.project(noise)
    step = residual * np.linalg.norm(structured) / np.linalg.norm(noise) / np.sqrt(1 - residual**2)
    return scale * (structured + step * noise)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_a_weight_at_half_the_tolerance_is_found_at_any_scale(scale):
    assert detect(near_structured(5e-5, scale), tol=1e-4) == STRUCTURE


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_a_weight_at_twice_the_tolerance_is_not_found(scale):
    assert detect(near_structured(2e-4, scale), tol=1e-4) != STRUCTURE


def test_a_torch_weight_that_requires_grad():
    weight = torch.tensor(near_structured(0.0, 1.0), requires_grad=True)
    assert detect(weight) == STRUCTURE
    assert detect(weight.float()) == STRUCTURE
