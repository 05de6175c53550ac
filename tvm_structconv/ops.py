"""TE computes of the structured ops: separable sum-pool followed by the reduced conv or dense.

``structured_conv2d`` is one TE function with three stages: zero padding, the pooled tensor ``S``
(running sums, one window axis at a time: channel, width, height — ``D + Mw + Mh`` adds per
element instead of ``D·Mh·Mw``), and the reduced conv over ``S``. The last stage carries the
``schedule_rule`` attribute ``SCHEDULE_RULE`` so that per-target schedules can find it. With a
trivial structure (``D = Mh = Mw = 1``) the pool stages vanish and it is an ordinary conv.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from tvm import te, topi

from tvm_structconv.structure import Structure

__all__ = ["SCHEDULE_RULE", "sum_pool", "structured_conv2d", "structured_dense"]

SCHEDULE_RULE = "structured_conv2d"


def _window_sum(tensor: te.Tensor, axis: int, window: int, step: int, name: str,
                group_size: int = 0, groups: int = 1) -> te.Tensor:
    """Sliding sum of ``window`` elements spaced ``step`` apart along ``axis`` (stride 1).

    With ``group_size`` set, the axis holds ``groups`` groups of ``group_size`` elements and the
    window slides within each group only (the output has ``group_size − window + 1`` per group).
    """
    if window == 1:
        return tensor
    shape = list(tensor.shape)
    if group_size:
        per_group = group_size - window + 1
        shape[axis] = per_group * groups
    else:
        shape[axis] = shape[axis] - step * (window - 1)
    offset = te.reduce_axis((0, window), name=f"{name}_k")

    def compute(*index):
        index = list(index)
        if group_size:
            position = index[axis]
            index[axis] = (position // per_group) * group_size + position % per_group + offset
        else:
            index[axis] = index[axis] + step * offset
        return te.sum(tensor[tuple(index)], axis=offset)

    return te.compute(shape, compute, name=name)


def sum_pool(padded: te.Tensor, structure: Structure, dilation: Tuple[int, int] = (1, 1)) -> te.Tensor:
    """``S``: the sum-pool of an already padded NCHW tensor over (channel, height, width).

    The channel window stays inside each group; spatial windows are dilated by ``dilation``.
    """
    depth, window_h, window_w = structure.pool_window
    pooled = _window_sum(padded, 1, depth, 1, "pool_channel",
                         structure.group_channels, structure.groups)
    pooled = _window_sum(pooled, 3, window_w, dilation[1], "pool_width")
    return _window_sum(pooled, 2, window_h, dilation[0], "pool_height")


def structured_conv2d(
    data: te.Tensor,
    alpha: te.Tensor,
    structure: Structure,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    out_dtype: Optional[str] = None,
) -> te.Tensor:
    """``conv2d(data, compose(alpha))`` computed as ``conv2d(S, alpha)``, NCHW / OIHW.

    Parameters
    ----------
    data
        Input ``(B, in_channels, H, W)``.
    alpha
        The small kernel ``(Cout, reduced_channels / groups, nh, nw)``.
    structure
        The layer's structure.
    strides, dilation
        ``(sh, sw)`` and ``(dh, dw)`` of the original conv.
    padding
        ``(top, left, bottom, right)``, as in Relax's ``conv2d`` attributes.
    out_dtype
        Accumulation and output dtype; defaults to the input's.
    """
    out_dtype = out_dtype or data.dtype
    top, left, bottom, right = (int(p) for p in padding)
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    if any((top, left, bottom, right)):
        data = topi.nn.pad(data, [0, 0, top, left], [0, 0, bottom, right], name="pad")
    pooled = sum_pool(data, structure, (dilation_h, dilation_w))
    batch, _, height, width = pooled.shape
    out_channels, reduced_per_group, kernel_h, kernel_w = alpha.shape
    out_h = (height - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    outputs_per_group = out_channels // structure.groups
    channel = te.reduce_axis((0, reduced_per_group), name="rc")
    row = te.reduce_axis((0, kernel_h), name="ry")
    column = te.reduce_axis((0, kernel_w), name="rx")
    return te.compute(
        (batch, out_channels, out_h, out_w),
        lambda b, o, y, x: te.sum(
            pooled[
                b,
                (o // outputs_per_group) * reduced_per_group + channel,
                y * stride_h + row * dilation_h,
                x * stride_w + column * dilation_w,
            ].astype(out_dtype)
            * alpha[o, channel, row, column].astype(out_dtype),
            axis=[channel, row, column],
        ),
        name="structured_conv2d",
        tag="structured_conv2d",
        attrs={"schedule_rule": SCHEDULE_RULE},
    )


def structured_dense(data: te.Tensor, alpha: te.Tensor, structure: Structure,
                     out_dtype: Optional[str] = None) -> te.Tensor:
    """``data @ compose(alpha)ᵀ`` as a sliding channel sum over the last axis, then ``@ alphaᵀ``.

    ``data`` is ``(..., in_features)``, ``alpha`` is ``(out_features, reduced_channels)``.
    """
    out_dtype = out_dtype or data.dtype
    pooled = _window_sum(data, len(data.shape) - 1, structure.pool_window[0], 1, "pool_channel")
    reduced = te.reduce_axis((0, structure.reduced_channels), name="rc")
    return te.compute(
        (*data.shape[:-1], alpha.shape[0]),
        lambda *index: te.sum(
            pooled[(*index[:-1], reduced)].astype(out_dtype)
            * alpha[index[-1], reduced].astype(out_dtype),
            axis=reduced,
        ),
        name="structured_dense",
        tag="structured_dense",
    )
