"""The initializations of ``alpha`` (issue 17 item 3): the composed kernel of the default
``"projected"`` init is the projection of an ``nn.Conv2d`` kernel (variance ``ρ`` times
``nn.Conv2d``'s, ``ρ`` the structured fraction of the kernel space), ``"matched"``'s has
``nn.Conv2d``'s variance, and unlike ``"pooled"`` neither prefers a direction inside the
structured subspace."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.nn import StructuredConv2d, StructuredLinear
from tvm_structconv.structure import Structure, banded_ones

from strategies import structures


def _layer(structure: Structure, out_channels: int, init: str, **kwargs) -> StructuredConv2d:
    return StructuredConv2d(
        structure.in_channels,
        out_channels,
        structure.kernel_size,
        structure.reduced_channels,
        structure.reduced_kernel_size,
        groups=structure.groups,
        init=init,
        **kwargs,
    )


def _conv2d_variance(structure: Structure) -> float:
    """``nn.Conv2d``'s default weight variance: uniform in ``±1/√fan_in``, so ``1/(3·fan_in)``."""
    return 1.0 / (3 * structure.group_channels * np.prod(structure.kernel_size))


def _structured_fraction(structure: Structure) -> float:
    """``ρ``: dimension of the structured kernels over that of all kernels, per output."""
    return float(np.prod(structure.alpha_shape(1)) / np.prod(structure.weight_shape(1)))


@settings(deadline=None, max_examples=30)
@given(
    structures(max_channels=8, max_kernel=5),
    st.sampled_from(["projected", "matched", "pooled"]),
    st.integers(0, 2**31 - 1),
)
def test_composed_kernel_variance_against_conv2d(structure, init, seed):
    """``"matched"`` and ``"pooled"`` give the composed kernel ``nn.Conv2d``'s entry variance,
    ``"projected"`` ``ρ`` times it (``E‖P W₀‖² = rank(P) σ²`` for i.i.d. entries).

    Enough output channels that the structured part holds ≥ 400 degrees of freedom: the
    relative s.d. of the mean square of n uniform entries is 0.89/√n ≤ 4.5 %, so ±30 % is
    over 6 s.d.; ``"pooled"``'s entries are sums of shared terms, so 4 times as many.
    """
    dof = 400 if init != "pooled" else 1600
    per_output = np.prod(structure.alpha_shape(structure.groups))
    out_channels = structure.groups * int(np.ceil(dof / per_output))
    torch.manual_seed(seed)
    layer = _layer(structure, out_channels, init, dtype=torch.float64)
    composed = structure.compose(layer.alpha.detach())
    expected = _conv2d_variance(structure)
    if init == "projected":
        expected *= _structured_fraction(structure)
    ratio = float(composed.square().mean()) / expected
    assert 0.7 < ratio < 1.3
    # the reference value is nn.Conv2d's own
    conv = nn.Conv2d(
        structure.in_channels,
        4 * out_channels,
        structure.kernel_size,
        groups=structure.groups,
        dtype=torch.float64,
    )
    conv_ratio = float(conv.weight.detach().square().mean()) / _conv2d_variance(structure)
    assert 0.7 < conv_ratio < 1.3


@pytest.mark.parametrize("shape", [(64, 32, 3, 2), (64, 32, 3, 3), (16, 8, 3, 2), (32, 16, 5, 3)])
def test_projected_init_is_the_projection_of_a_conv2d_draw(shape):
    """``"projected"`` composes to ``P W₀`` of the ``nn.Conv2d`` kernel drawn from the same
    seed; ``"matched"`` to the same direction with ``W₀``'s norm."""
    channels, reduced, kernel, reduced_kernel = shape
    structure = Structure(channels, kernel, reduced, reduced_kernel)
    torch.manual_seed(3)
    reference = torch.empty(structure.weight_shape(48), dtype=torch.float64)
    nn.init.kaiming_uniform_(reference, a=5**0.5)
    layers = {}
    for init in ("projected", "matched"):
        torch.manual_seed(3)
        layers[init] = _layer(structure, 48, init, dtype=torch.float64)
    projected = structure.compose(layers["projected"].alpha.detach())
    torch.testing.assert_close(projected, structure.project(reference))
    matched = structure.compose(layers["matched"].alpha.detach())
    torch.testing.assert_close(matched.norm(), reference.norm())
    torch.testing.assert_close(matched / matched.norm(), projected / projected.norm())


def _top_direction_share(structure: Structure, init: str, out_channels: int = 3000) -> float:
    """Mean share of a composed kernel's energy along the top eigenvector of ``A Aᵀ``."""
    torch.manual_seed(0)
    layer = _layer(structure, out_channels, init, dtype=torch.float64)
    kernels = structure.compose(layer.alpha.detach()).flatten(1).numpy()
    (kh, kw), (nh, nw) = structure.kernel_size, structure.reduced_kernel_size
    a = np.kron(
        banded_ones(structure.group_channels, structure.group_reduced_channels),
        np.kron(banded_ones(kh, nh), banded_ones(kw, nw)),
    )
    top = np.linalg.eigh(a @ a.T)[1][:, -1]
    return float(np.mean((kernels @ top) ** 2) / np.mean(np.sum(kernels**2, axis=1)))


@pytest.mark.parametrize("shape", [(8, 4, 3, 2), (12, 6, 3, 3), (6, 3, 3, 2)])
@pytest.mark.parametrize("init", ["projected", "matched"])
def test_projected_init_is_isotropic_in_the_structured_subspace(shape, init):
    """Covariance ∝ the projector: every structured direction gets ``1/rank`` of the energy.

    The ``"pooled"`` init (covariance ∝ ``A Aᵀ``) puts several times that into the top
    direction (the smooth kernel, nearly constant over the channel window).
    """
    channels, reduced, kernel, reduced_kernel = shape
    structure = Structure(channels, kernel, reduced, reduced_kernel)
    rank = reduced * reduced_kernel**2
    assert _top_direction_share(structure, init) == pytest.approx(1 / rank, rel=0.2)
    assert _top_direction_share(structure, "pooled") > 3 / rank


def test_projected_init_keeps_the_output_scale_on_non_negative_inputs():
    """On inputs with a positive mean (as after a ReLU) the pooled init's outputs start ~8×
    larger than ``nn.Conv2d``'s, the projected and matched inits' within 2× (64→64,
    c = C/2, n = 2)."""
    torch.manual_seed(0)
    x = torch.rand(8, 64, 12, 12)
    with torch.no_grad():
        conv_std = float(nn.Conv2d(64, 64, 3, padding=1)(x).std())
        ratios = {
            init: float(StructuredConv2d(64, 64, 3, 32, 2, padding=1, init=init)(x).std())
            / conv_std
            for init in ("projected", "matched", "pooled")
        }
    assert 0.5 < ratios["projected"] < 2.0
    assert 0.5 < ratios["matched"] < 2.0
    assert ratios["pooled"] > 4.0


@pytest.mark.parametrize("init, fraction", [("projected", 24 / 64), ("matched", 1.0)])
def test_linear_init_against_nn_linear_variance(init, fraction):
    torch.manual_seed(0)
    layer = StructuredLinear(64, 200, 24, init=init, dtype=torch.float64)
    composed = layer.structure.compose(layer.alpha.detach())
    assert 0.8 < float(composed.square().mean()) * 3 * 64 / fraction < 1.2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("init", ["projected", "matched"])
def test_projected_init_in_low_precision_and_on_meta(dtype, init):
    layer = StructuredConv2d(8, 6, 3, 4, 2, init=init, dtype=dtype)
    assert layer.alpha.dtype == dtype and bool(torch.isfinite(layer.alpha).all())
    meta = StructuredConv2d(8, 6, 3, 4, 2, init=init, device="meta", dtype=dtype)
    assert meta.alpha.device.type == "meta"


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init must be one of"):
        StructuredConv2d(8, 6, 3, 4, 2, init="kaiming")
    with pytest.raises(ValueError, match="init must be one of"):
        StructuredLinear(8, 6, 4, init="")
