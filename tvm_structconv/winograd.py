"""Winograd form of the structured 3×3 conv with a 2×2 ``alpha`` (``c = C``, ``n = 2``).

A structured 3×3 conv is ``conv2d(S, alpha)`` with ``S`` the 2×2 sum-pool of the padded input
(:mod:`tvm_structconv.ops`). The 2×2 conv over ``S`` is computed with Winograd's minimal
filtering F(m×m, 2×2): per ``m × m`` output tile and channel pair ``(m+1)²`` multiplies instead
of ``4m²`` (F(4, 2): 25 instead of 64). The stages of :func:`winograd_structured_conv2d_nhwc`:

* ``pad`` and the pool stages (``pool_width``, ``pool_height``) give ``S``, padded at the bottom
  and right so that whole tiles cover the output;
* ``winograd_input_rows`` and ``winograd_input``: ``V = Bᵀ d B`` of every ``(m+1)²`` tile ``d``
  of ``S`` (tiles overlap by one), one 1-D transform per axis;
* ``winograd_gemm``, the block tagged ``schedule_rule = "structured_winograd"``: for each of
  the ``(m+1)²`` positions a GEMM ``[tiles, C] × [C, K]`` against the transformed kernel
  ``U = G alpha Gᵀ`` (computed at compile time by :func:`transform_alpha`);
* ``winograd_output_rows`` and ``winograd_output``: ``Y = Aᵀ M A`` per tile, written to the
  NHWC output (a fused epilogue follows it).

The 1-D transforms are written out term by term from the constant matrices (zeros dropped,
``±1`` as adds), selected by the transform's row index: the schedule unrolls that index and
TVM folds the selection away. The matrices are TVM's Cook–Toom construction
(``tvm.topi.nn.winograd_util``) with its interpolation points, called through its helpers:
its public ``winograd_transform_matrices`` refuses a kernel of size 2 and returns TE tensors,
where the kernel transform here is numpy at compile time.
"""

from __future__ import annotations

from functools import cache
from typing import Optional, Sequence, Tuple

import numpy as np
from tvm import te, tirx, topi
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

from tvm_structconv.ops import sum_pool
from tvm_structconv.structure import Structure

__all__ = [
    "WINOGRAD_RULE",
    "transform_alpha",
    "winograd_matrices",
    "winograd_structured_conv2d_nhwc",
]

WINOGRAD_RULE = "structured_winograd"

#: Interpolation points of F(2, 2) (TVM's table starts at three points).
_POINTS_F2 = (0.0, -1.0)


@cache
def winograd_matrices(tile: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, G)`` of F(``tile``, 2) in float64: ``y = Aᵀ[(G g) ⊙ (Bᵀ d)]``.

    ``A`` is ``(tile+1, tile)``, ``B`` is ``(tile+1, tile+1)``, ``G`` is ``(tile+1, 2)``.
    """
    if not 2 <= tile <= 8:
        raise ValueError(f"Winograd tile must be 2 to 8, got {tile}")
    points = np.array(_POINTS_F2) if tile == 2 else _interpolation_points(tile)
    return tuple(np.asarray(m, dtype=np.float64) for m in _cook_toom_convolution(points, tile, 2))


def transform_alpha(alpha: np.ndarray, tile: int, block: int) -> np.ndarray:
    """``U = G alpha Gᵀ`` packed ``(tile+1, tile+1, Kp/block, C, block)``, in ``alpha``'s dtype.

    ``alpha`` is OIHW ``(K, C, 2, 2)``; output channels are padded with zeros up to a multiple
    of ``block`` (``Kp``). Computed in float64, then cast.
    """
    out_channels, channels, height, width = alpha.shape
    if (height, width) != (2, 2):
        raise ValueError(f"alpha must be 2x2, got {height}x{width}")
    _, _, g = winograd_matrices(tile)
    u = np.einsum("xa,kcab,yb->xykc", g, alpha.astype(np.float64), g)
    padded = -(-out_channels // block) * block
    u = np.concatenate([u, np.zeros((tile + 1, tile + 1, padded - out_channels, channels))], 2)
    u = u.reshape(tile + 1, tile + 1, padded // block, block, channels).transpose(0, 1, 2, 4, 3)
    return np.ascontiguousarray(u.astype(alpha.dtype))


def _combination(row: np.ndarray, terms: Sequence[tirx.PrimExpr], dtype: str) -> tirx.PrimExpr:
    """``Σ row[j] · terms[j]`` (of ``dtype``) with zeros dropped and ``±1`` as plain adds."""
    total = None
    for coefficient, term in zip(row, terms):
        if coefficient == 0:
            continue
        if coefficient == 1:
            value, negate = term, False
        elif coefficient == -1:
            value, negate = term, True
        else:
            value, negate = tirx.const(float(coefficient), dtype) * term, False
        if total is None:
            total = -value if negate else value
        else:
            total = total - value if negate else total + value
    return total if total is not None else tirx.const(0.0, dtype)


def _transform(
    matrix: np.ndarray, index: tirx.PrimExpr, terms: Sequence[tirx.PrimExpr], dtype: str
) -> tirx.PrimExpr:
    """Row ``index`` of ``matrix @ terms``, every row written out, selected by ``index``."""
    expr = _combination(matrix[-1], terms, dtype)
    for row in reversed(range(matrix.shape[0] - 1)):
        expr = tirx.Select(index == row, _combination(matrix[row], terms, dtype), expr)
    return expr


def winograd_structured_conv2d_nhwc(
    data: te.Tensor,
    transformed_alpha: te.Tensor,
    out_channels: int,
    padding: Sequence[int] = (1, 1, 1, 1),
    out_dtype: Optional[str] = None,
) -> te.Tensor:
    """The structured 3×3 conv (``c = C``, ``n = 2``, stride 1) by Winograd F(m, 2), NHWC.

    Parameters
    ----------
    data
        Input ``(B, H, W, C)``.
    transformed_alpha
        ``U`` from :func:`transform_alpha`: ``(m+1, m+1, Kp/block, C, block)``.
    out_channels
        ``K`` (the output has ``K`` channels; ``Kp − K`` padded ones are dropped).
    padding
        ``(top, left, bottom, right)`` of the original 3×3 conv.
    out_dtype
        Accumulation and output dtype; defaults to the input's.

    Returns
    -------
    te.Tensor
        ``(B, H + top + bottom − 2, W + left + right − 2, K)``.
    """
    out_dtype = out_dtype or data.dtype
    batch, height, width, channels = (int(d) for d in data.shape)
    positions, _, blocks, _, block = (int(d) for d in transformed_alpha.shape)
    tile = positions - 1
    top, left, bottom, right = (int(p) for p in padding)
    out_h, out_w = height + top + bottom - 2, width + left + right - 2
    tiles_h, tiles_w = -(-out_h // tile), -(-out_w // tile)
    # S must have tiles·m + 1 rows and columns: pad the input further at the bottom and right
    extra_h, extra_w = tiles_h * tile - out_h, tiles_w * tile - out_w
    padded = topi.nn.pad(
        data, [0, top, left, 0], [0, bottom + extra_h, right + extra_w, 0], name="pad"
    )
    pooled = sum_pool(padded, Structure(channels, 3, channels, 2), layout="NHWC")
    a, b, _ = winograd_matrices(tile)
    b_t, a_t = b.T, a.T

    def input_rows(n, th, tw, i, nu, c):
        row = th * tile + i
        terms = [pooled[n, row, tw * tile + j, c].astype(out_dtype) for j in range(positions)]
        return _transform(b_t, nu, terms, out_dtype)

    rows = te.compute(
        (batch, tiles_h, tiles_w, positions, positions, channels),
        input_rows,
        name="winograd_input_rows",
    )

    def input_tiles(xi, nu, n, th, tw, c):
        return _transform(b_t, xi, [rows[n, th, tw, i, nu, c] for i in range(positions)], out_dtype)

    transformed = te.compute(
        (positions, positions, batch, tiles_h, tiles_w, channels),
        input_tiles,
        name="winograd_input",
    )
    channel = te.reduce_axis((0, channels), name="rc")
    products = te.compute(
        (positions, positions, batch, tiles_h, tiles_w, blocks * block),
        lambda xi, nu, n, th, tw, k: te.sum(
            transformed[xi, nu, n, th, tw, channel]
            * transformed_alpha[xi, nu, k // block, channel, k % block].astype(out_dtype),
            axis=channel,
        ),
        name="winograd_gemm",
        tag="structured_winograd",
        attrs={"schedule_rule": WINOGRAD_RULE},
    )

    def output_rows(n, th, tw, eta, nu, k):
        terms = [products[xi, nu, n, th, tw, k] for xi in range(positions)]
        return _transform(a_t, eta, terms, out_dtype)

    half = te.compute(
        (batch, tiles_h, tiles_w, tile, positions, blocks * block),
        output_rows,
        name="winograd_output_rows",
    )

    def output(n, y, x, k):
        terms = [half[n, y // tile, x // tile, y % tile, nu, k] for nu in range(positions)]
        return _transform(a_t, x % tile, terms, out_dtype)

    return te.compute(
        (batch, out_h, out_w, out_channels),
        output,
        name="winograd_output",
        tag="structured_winograd_output",
    )
