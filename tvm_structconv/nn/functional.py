"""Reference structured ops in torch: sum-pool, then the reduced conv or linear.

These are the oracle for the compiler's tests and the fast path for training: they never form
the full kernel ``W``, so their cost is that of the structured layer.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from tvm_structconv.structure import IntPair, Structure, as_pair

__all__ = [
    "window_sum",
    "window_sum_adjoint",
    "sum_pool",
    "structured_conv2d",
    "structured_linear",
]

Padding = Union[int, Tuple[int, int], Tuple[int, int, int, int]]


def _padding_lrtb(padding: Padding) -> Tuple[int, int, int, int]:
    """Padding as ``(left, right, top, bottom)``, the order of ``torch.nn.functional.pad``."""
    if isinstance(padding, int):
        return (padding,) * 4
    padding = tuple(padding)
    if len(padding) == 2:
        return (padding[1], padding[1], padding[0], padding[0])
    if len(padding) == 4:
        return padding  # type: ignore[return-value]
    raise ValueError(
        f"padding must be an int, (ph, pw) or (left, right, top, bottom), got {padding!r}"
    )


def window_sum(x: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    """Sums of ``size`` elements of ``x`` spaced ``dilation`` apart along ``dim``, stride 1.

    ``y[i] = Σ_{k<size} x[i + k·dilation]``, so ``dim`` shrinks by ``dilation·(size − 1)``.
    Differentiable; its backward is :func:`window_sum_adjoint` (and the other way round), not
    autograd through the slices, which would zero-fill a full-size gradient for each.
    See :func:`_window_sum` for how it sums.
    """
    return x if size == 1 else _WindowSum.apply(x, dim, size, dilation)


def window_sum_adjoint(grad: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    """The adjoint of :func:`window_sum`: ``dim`` grows back by ``dilation·(size − 1)``.

    ``x̄[j] = Σ_{k<size} ȳ[j − k·dilation]``: the same window sum over ``ȳ`` zero-padded by
    ``dilation·(size − 1)`` on both sides. Differentiable (its backward is the window sum).
    """
    return grad if size == 1 else _WindowSumAdjoint.apply(grad, dim, size, dilation)


class _WindowSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, size, dilation):  # type: ignore[override]
        ctx.window = (dim, size, dilation)
        return _window_sum(x, dim, size, dilation)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return window_sum_adjoint(grad, *ctx.window), None, None, None


class _WindowSumAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, dim, size, dilation):  # type: ignore[override]
        ctx.window = (dim, size, dilation)
        return _window_sum_adjoint(grad, dim, size, dilation)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return window_sum(grad, *ctx.window), None, None, None


def _window_sum(x: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    """Sums of ``size`` elements of ``x`` spaced ``dilation`` apart along ``dim``, stride 1.

    ``y[i] = Σ_{k<size} x[i + k·dilation]``, so ``dim`` shrinks by ``dilation·(size − 1)``. Done
    with running sums by doubling (sums of 1, 2, 4 … elements, then the binary digits of
    ``size``): about ``2·log2(size)`` strided adds, whatever the window, and no rounding
    error that grows with the window as a cumulative-sum difference would have.
    """
    if size == 1:
        return x
    length = x.shape[dim] - dilation * (size - 1)
    block, span, total, offset = x, 1, None, 0  # block[i] = Σ_{k<span} x[i + k·dilation]
    remaining = size
    while True:
        if remaining & 1:
            part = block.narrow(dim, offset * dilation, length)
            total = part if total is None else total + part
            offset += span
        remaining >>= 1
        if not remaining:
            return total
        shift = span * dilation
        block = block.narrow(dim, 0, block.shape[dim] - shift) + block.narrow(
            dim, shift, block.shape[dim] - shift
        )
        span *= 2


def _window_sum_adjoint(grad: torch.Tensor, dim: int, size: int, dilation: int = 1) -> torch.Tensor:
    if size == 1:
        return grad
    margin = dilation * (size - 1)
    pad = [0, 0] * (grad.dim() - 1 - dim % grad.dim()) + [margin, margin]
    return _window_sum(F.pad(grad, pad), dim, size, dilation)


def _pool_channels(x: torch.Tensor, structure: Structure, adjoint: bool) -> torch.Tensor:
    """Window sum (or its adjoint) over the channels of ``x``, inside each group."""
    depth = structure.pool_window[0]
    if depth == 1:
        return x
    batch, channels, height, width = x.shape
    grouped = x.reshape(batch, structure.groups, channels // structure.groups, height, width)
    pooled = (_window_sum_adjoint if adjoint else _window_sum)(grouped, 2, depth)
    return pooled.reshape(batch, -1, height, width)


def _pool(
    x: torch.Tensor, structure: Structure, dilation: Tuple[int, int], adjoint: bool
) -> torch.Tensor:
    _, window_h, window_w = structure.pool_window
    spatial = _window_sum_adjoint if adjoint else _window_sum
    x = spatial(x, 2, window_h, dilation[0])
    x = spatial(x, 3, window_w, dilation[1])
    return _pool_channels(x, structure, adjoint)


class _PaddedSumPool(torch.autograd.Function):
    """``sum_pool(zero_pad(x))`` with a hand-written backward: the adjoint window sums, cropped.

    Autograd through the strided adds would zero-fill a full-size gradient for every slice;
    the adjoint is the same few adds on the gradient instead.
    """

    @staticmethod
    def forward(ctx, x, structure, dilation, padding):  # type: ignore[override]
        ctx.structure, ctx.dilation, ctx.padding = structure, dilation, padding
        padded = F.pad(x, padding) if any(padding) else x
        return _pool(padded, structure, dilation, adjoint=False)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        padded = _pool(grad, ctx.structure, ctx.dilation, adjoint=True)
        left, right, top, bottom = ctx.padding
        if any(ctx.padding):
            height, width = padded.shape[-2:]
            padded = padded[..., top : height - bottom, left : width - right]
        return padded, None, None, None


def sum_pool(
    x: torch.Tensor, structure: Structure, dilation: IntPair = 1, padding: Padding = 0
) -> torch.Tensor:
    """Sum-pool ``x`` over (channel, height, width) with the window ``structure.pool_window``.

    The channel window slides within each group of ``structure.group_channels`` channels and
    never crosses into the next group; the spatial window is dilated by ``dilation``, stride 1,
    after zero ``padding`` (as in :func:`structured_conv2d`). ``x`` of shape
    ``(B, in_channels, H, W)`` gives ``(B, reduced_channels, H' − dh·(Mh−1), W' − dw·(Mw−1))``
    for the padded size ``H' × W'``. Separable running sums (:func:`window_sum`), forward and
    backward, in any memory format.
    """
    if x.dim() != 4 or x.shape[1] != structure.in_channels:
        raise ValueError(
            f"input must be (B, {structure.in_channels}, H, W), got shape {tuple(x.shape)}"
        )
    return _PaddedSumPool.apply(x, structure, as_pair(dilation, "dilation"), _padding_lrtb(padding))


def structured_conv2d(
    x: torch.Tensor,
    alpha: torch.Tensor,
    structure: Structure,
    bias: Optional[torch.Tensor] = None,
    *,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
) -> torch.Tensor:
    """``conv2d(x, structure.compose(alpha), bias, stride, padding, dilation, groups)``, fast.

    Computes ``conv2d(S, alpha, bias, stride, dilation, groups)`` with
    ``S = sum_pool(zero_pad(x, padding))``, which is the same by linearity.

    Parameters
    ----------
    x
        Input ``(B, in_channels, H, W)``.
    alpha
        Small kernel ``(Cout, reduced_channels / groups, nh, nw)``.
    structure
        The layer's structure.
    bias
        Optional ``(Cout,)`` bias.
    stride, dilation
        As in ``torch.nn.functional.conv2d``.
    padding
        ``p``, ``(ph, pw)`` or asymmetric ``(left, right, top, bottom)`` zero padding.
    """
    if tuple(alpha.shape) != structure.alpha_shape(alpha.shape[0]):
        raise ValueError(
            f"alpha has shape {tuple(alpha.shape)}, expected "
            f"{structure.alpha_shape(alpha.shape[0])} for {structure}"
        )
    pooled = sum_pool(x, structure, dilation, padding)
    return F.conv2d(pooled, alpha, bias, stride=stride, dilation=dilation, groups=structure.groups)


def structured_linear(
    x: torch.Tensor,
    alpha: torch.Tensor,
    structure: Structure,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``linear(x, structure.compose(alpha), bias)`` as a sliding channel sum then a small linear.

    ``x`` has ``structure.in_channels`` features in its last axis; ``alpha`` is
    ``(out_features, reduced_channels)``.
    """
    if structure.kernel_size != (1, 1) or structure.groups != 1:
        raise ValueError(f"a linear layer needs a 1x1 structure with groups=1, got {structure}")
    if x.shape[-1] != structure.in_channels:
        raise ValueError(f"input has {x.shape[-1]} features, expected {structure.in_channels}")
    if tuple(alpha.shape) != (alpha.shape[0], structure.reduced_channels):
        raise ValueError(
            f"alpha has shape {tuple(alpha.shape)}, expected "
            f"(out_features, {structure.reduced_channels})"
        )
    leading = x.shape[:-1]
    pooled = sum_pool(x.reshape(-1, structure.in_channels, 1, 1), structure)
    return F.linear(pooled.reshape(*leading, structure.reduced_channels), alpha, bias)
