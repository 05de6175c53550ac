"""Reference structured ops in torch: sum-pool, then the reduced conv or linear.

These are the oracle for the compiler's tests and the fast path for training: they never form
the full kernel ``W``, so their cost is that of the structured layer.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from tvm_structconv.structure import IntPair, Structure, as_pair

__all__ = ["sum_pool", "structured_conv2d", "structured_linear"]

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


def sum_pool(x: torch.Tensor, structure: Structure, dilation: IntPair = 1) -> torch.Tensor:
    """Sum-pool ``x`` over (channel, height, width) with the window ``structure.pool_window``.

    The channel window slides within each group of ``structure.group_channels`` channels and
    never crosses into the next group; the spatial window is dilated by ``dilation``, stride 1,
    no padding. ``x`` of shape ``(B, in_channels, H, W)`` gives
    ``(B, reduced_channels, H − dh·(Mh−1), W − dw·(Mw−1))``.
    """
    if x.dim() != 4 or x.shape[1] != structure.in_channels:
        raise ValueError(
            f"input must be (B, {structure.in_channels}, H, W), got shape {tuple(x.shape)}"
        )
    dilation_h, dilation_w = as_pair(dilation, "dilation")
    depth, window_h, window_w = structure.pool_window
    batch, _, height, width = x.shape
    if depth > 1:  # channel window, inside each group: a (D, 1) window over (channel, pixel)
        grouped = x.reshape(batch * structure.groups, 1, structure.group_channels, height * width)
        x = F.avg_pool2d(grouped, (depth, 1), stride=1) * float(depth)
        x = x.reshape(batch, structure.reduced_channels, height, width)
    if (window_h, window_w) == (1, 1):
        return x
    if (dilation_h, dilation_w) == (1, 1):
        return F.avg_pool2d(x, (window_h, window_w), stride=1) * float(window_h * window_w)
    ones = torch.ones((x.shape[1], 1, window_h, window_w), dtype=x.dtype, device=x.device)
    return F.conv2d(x, ones, dilation=(dilation_h, dilation_w), groups=x.shape[1])


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
    padded = F.pad(x, _padding_lrtb(padding))
    pooled = sum_pool(padded, structure, dilation)
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
    depth = structure.pool_window[0]
    leading = x.shape[:-1]
    flat = x.reshape(-1, 1, structure.in_channels)
    pooled = F.avg_pool1d(flat, depth, stride=1) * float(depth) if depth > 1 else flat
    return F.linear(pooled.reshape(*leading, structure.reduced_channels), alpha, bias)
