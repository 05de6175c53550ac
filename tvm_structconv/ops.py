"""TE computes of the structured ops: separable sum-pool followed by the reduced conv or dense.

``structured_conv2d`` (NCHW in and out, ``alpha`` as OIHW) and ``structured_conv2d_nhwc``
(NHWC in and out, ``alpha`` pre-packed by :func:`pack_alpha`) are one TE function each with
three stages: zero padding, the pooled tensor ``S`` (sums one window axis at a time: channel,
width, height — ``D + Mw + Mh`` adds per element instead of ``D·Mh·Mw``), and the reduced conv
over ``S``. The last stage carries the ``schedule_rule`` attribute ``SCHEDULE_RULE`` so that
per-target schedules can find it. With a trivial structure (``D = Mh = Mw = 1``) the pool
stages vanish and it is an ordinary conv.

The NHWC form is the one the CPU schedules are written for: channels are contiguous, so the
pool stages vectorize over channels, and ``alpha`` packed as ``(Cout/B, nh, nw, c, B)`` gives
the reduced conv contiguous vectors of ``B`` output channels per (row, column, input channel)
of the kernel, one register block of the accumulator (:mod:`tvm_structconv.schedules.cpu.conv`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple

import numpy as np
from tvm import te, tirx, topi

from tvm_structconv.structure import Structure

if TYPE_CHECKING:
    from tvm import s_tir

__all__ = [
    "SCHEDULE_RULE",
    "find_structured_block",
    "schedule_of_conv",
    "stages_around",
    "pack_alpha",
    "sum_pool",
    "structured_conv2d",
    "structured_conv2d_nhwc",
    "structured_dense",
]

SCHEDULE_RULE = "structured_conv2d"


def schedule_of_conv(func) -> Optional[tuple]:
    """``(schedule, block)`` of a PrimFunc holding the fused conv; ``None`` for anything else.

    What every schedule rule of the fused op starts with (``func`` may be any function of a
    module: Relax functions are answered ``None``).
    """
    from tvm import s_tir, tirx

    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    block = find_structured_block(sch)
    return None if block is None else (sch, block)


def stages_around(sch, block) -> Tuple[list, list]:
    """The root blocks before ``block`` (padding, pool stages) and after it (fused epilogue)."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    index = [sch.get(b).same_as(sch.get(block)) for b in blocks].index(True)
    return list(blocks[:index]), list(blocks[index + 1 :])


def find_structured_block(func_or_schedule) -> Optional[s_tir.schedule.SBlockRV]:
    """The root-level block of a PrimFunc (or schedule) tagged with :data:`SCHEDULE_RULE`.

    Returns the block (of the given schedule, or of a new one for a PrimFunc), or ``None``
    when the function holds no fused conv.
    """
    from tvm import s_tir

    sch = func_or_schedule
    if not isinstance(sch, s_tir.Schedule):
        sch = s_tir.Schedule(func_or_schedule)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if sch.get(block).annotations.get("schedule_rule") == SCHEDULE_RULE:
            return block
    return None


# (channel, height, width) axis of each supported activation layout
_AXES = {"NCHW": (1, 2, 3), "NHWC": (3, 1, 2)}


def _check_layout(layout: str) -> str:
    if layout not in _AXES:
        raise ValueError(f"layout must be one of {sorted(_AXES)}, got {layout!r}")
    return layout


def _window_sum(
    tensor: te.Tensor,
    axis: int,
    window: int,
    step: int,
    name: str,
    group_size: int = 0,
    groups: int = 1,
) -> te.Tensor:
    """Sliding sum of ``window`` elements spaced ``step`` apart along ``axis`` (stride 1).

    With ``group_size`` set, the axis holds ``groups`` groups of ``group_size`` elements and the
    window slides within each group only (the output has ``group_size − window + 1`` per group).

    Computed by doubling, so a window of ``D`` costs about ``log2 D + popcount D`` adds per
    element rather than ``D`` (a 1×1 layer with ``c = C/2`` has ``D = C/2 + 1``): stages
    ``name_2``, ``name_4`` … hold sums of 2, 4 … elements (``T_2m[j] = T_m[j] + T_m[j + m]``),
    and the stage ``name`` adds the powers of two that make up ``window`` (for a power of two,
    the last doubling stage is ``name``). Every sum is a balanced tree of the inputs.

    Each doubling is one elementwise pass (``a + b``): a CPU schedule vectorizes it, a GPU
    schedule computes it into shared memory with one thread per element.
    """
    if window == 1:
        return tensor
    length = group_size if group_size else int(tensor.shape[axis])
    groups = groups if group_size else 1

    def source_index(index, out_length: int, source_length: int, shift) -> tuple:
        """``index`` moved to the source tensor and ``shift`` further along ``axis``."""
        moved = list(index)
        position = index[axis]
        if groups > 1:
            position = (position // out_length) * source_length + position % out_length
        moved[axis] = position + shift
        return tuple(moved)

    def shape_of(out_length: int) -> list:
        shape = list(tensor.shape)
        shape[axis] = out_length * groups
        return shape

    def doubling(
        source: te.Tensor, source_length: int, out_length: int, size: int, stage_name: str
    ) -> te.Tensor:
        """Sums of ``2·size`` elements from the sums of ``size`` in ``source``."""
        return te.compute(
            shape_of(out_length),
            lambda *index: (
                source[source_index(index, out_length, source_length, 0)]
                + source[source_index(index, out_length, source_length, size * step)]
            ),
            name=stage_name,
        )

    powers = [(tensor, length)]  # powers[b]: sums of 2**b elements and their group length
    while 2 ** len(powers) <= window:
        size = 2 ** (len(powers) - 1)
        source, source_length = powers[-1]
        out_length = source_length - size * step
        stage_name = name if 2 * size == window else f"{name}_{2 * size}"
        powers.append((doubling(source, source_length, out_length, size, stage_name), out_length))
    if 2 ** (len(powers) - 1) == window:
        return powers[-1][0]
    terms, offset = [], 0
    for bit in reversed(range(len(powers))):
        if window >> bit & 1:
            terms.append((*powers[bit], offset * step))
            offset += 2**bit
    out_length = length - (window - 1) * step

    def combine(*index):
        values = [
            source[source_index(index, out_length, source_length, shift)]
            for source, source_length, shift in terms
        ]
        total = values[0]
        for value in values[1:]:
            total = total + value
        return total

    return te.compute(shape_of(out_length), combine, name=name)


def sum_pool(
    padded: te.Tensor,
    structure: Structure,
    dilation: Tuple[int, int] = (1, 1),
    layout: str = "NCHW",
) -> te.Tensor:
    """``S``: the sum-pool of an already padded tensor over (channel, height, width).

    The channel window stays inside each group; spatial windows are dilated by ``dilation``.
    ``layout`` is ``"NCHW"`` or ``"NHWC"``; ``S`` has the same layout.
    """
    channel_axis, height_axis, width_axis = _AXES[_check_layout(layout)]
    depth, window_h, window_w = structure.pool_window
    pooled = _window_sum(
        padded, channel_axis, depth, 1, "pool_channel", structure.group_channels, structure.groups
    )
    pooled = _window_sum(pooled, width_axis, window_w, dilation[1], "pool_width")
    return _window_sum(pooled, height_axis, window_h, dilation[0], "pool_height")


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
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    pooled = sum_pool(_pad(data, padding, "NCHW"), structure, (dilation_h, dilation_w))
    batch, _, height, width = pooled.shape
    out_channels, reduced_per_group, kernel_h, kernel_w = alpha.shape
    out_h = _output_size(height, kernel_h, stride_h, dilation_h)
    out_w = _output_size(width, kernel_w, stride_w, dilation_w)
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


def pack_alpha(alpha: np.ndarray, block: int) -> np.ndarray:
    """``alpha`` (OIHW, ``(Cout, c/groups, nh, nw)``) packed as
    ``(Cout/block, nh, nw, c/groups, block)``."""
    out_channels, channels, height, width = alpha.shape
    if out_channels % block:
        raise ValueError(f"block {block} does not divide {out_channels} output channels")
    packed = alpha.reshape(out_channels // block, block, channels, height, width)
    return np.ascontiguousarray(packed.transpose(0, 3, 4, 2, 1))


def _pad(data: te.Tensor, padding: Sequence[int], layout: str) -> te.Tensor:
    """Zero-pad the spatial axes by ``(top, left, bottom, right)``; no stage when all are 0."""
    top, left, bottom, right = (int(p) for p in padding)
    if not any((top, left, bottom, right)):
        return data
    _, height_axis, width_axis = _AXES[layout]
    before, after = [0] * 4, [0] * 4
    before[height_axis], before[width_axis] = top, left
    after[height_axis], after[width_axis] = bottom, right
    return topi.nn.pad(data, before, after, name="pad")


def _pad_nchw_as_nhwc(data: te.Tensor, padding: Sequence[int]) -> te.Tensor:
    """An NCHW tensor zero-padded by ``(top, left, bottom, right)`` and read as NHWC, one stage.

    The stage is named ``pad`` like :func:`_pad`'s, so the conv schedules treat it alike (copied
    per task next to its use, or inlined into the first window sum): the layout change of a
    model's NCHW input then costs no pass of its own.
    """
    top, left, bottom, right = (int(p) for p in padding)
    batch, channels, height, width = (int(d) for d in data.shape)

    def value(b, y, x, c):
        inside = tirx.all(y >= top, y < height + top, x >= left, x < width + left)
        return tirx.if_then_else(inside, data[b, c, y - top, x - left], tirx.const(0, data.dtype))

    if not any((top, left, bottom, right)):
        return te.compute(
            (batch, height, width, channels), lambda b, y, x, c: data[b, c, y, x], name="pad"
        )
    shape = (batch, height + top + bottom, width + left + right, channels)
    return te.compute(shape, value, name="pad")


def _subsample(data: te.Tensor, stride_h: int, stride_w: int) -> te.Tensor:
    """Every ``stride_h``-th row and ``stride_w``-th column of an NHWC tensor."""
    batch, height, width, channels = data.shape
    shape = (batch, (height - 1) // stride_h + 1, (width - 1) // stride_w + 1, channels)
    return te.compute(
        shape, lambda b, y, x, c: data[b, y * stride_h, x * stride_w, c], name="subsample"
    )


def _output_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def structured_conv2d_nhwc(
    data: te.Tensor,
    packed_alpha: te.Tensor,
    structure: Structure,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    out_dtype: Optional[str] = None,
    data_layout: str = "NHWC",
) -> te.Tensor:
    """``conv2d(data, compose(alpha))`` computed as ``conv2d(S, alpha)``, NHWC in and out.

    Parameters
    ----------
    data
        Input ``(B, H, W, in_channels)``, or ``(B, in_channels, H, W)`` with
        ``data_layout="NCHW"`` (a model's input, read as NHWC by the padding stage: no
        transpose of its own).
    packed_alpha
        The small kernel packed by :func:`pack_alpha`: ``(Cout/block, nh, nw, c/groups, block)``.
    structure
        The layer's structure.
    strides, dilation
        ``(sh, sw)`` and ``(dh, dw)`` of the original conv.
    padding
        ``(top, left, bottom, right)``, as in Relax's ``conv2d`` attributes.
    out_dtype
        Accumulation and output dtype; defaults to the input's.
    data_layout
        ``"NHWC"`` or ``"NCHW"``: the layout of ``data``; the output is NHWC either way.
    """
    out_dtype = out_dtype or data.dtype
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    if _check_layout(data_layout) == "NCHW":
        padded = _pad_nchw_as_nhwc(data, padding)
    else:
        padded = _pad(data, padding, "NHWC")
    if (
        not structure.is_trivial
        and structure.kernel_size == (1, 1)
        and (stride_h, stride_w) != (1, 1)
    ):
        # a strided 1x1 conv reads S only on the strided grid: pool the channels only there
        padded = _subsample(padded, stride_h, stride_w)
        stride_h = stride_w = 1
    pooled = sum_pool(padded, structure, (dilation_h, dilation_w), "NHWC")
    batch, height, width, _ = pooled.shape
    blocks, kernel_h, kernel_w, reduced_per_group, block = (int(d) for d in packed_alpha.shape)
    out_channels = blocks * block
    out_h = _output_size(height, kernel_h, stride_h, dilation_h)
    out_w = _output_size(width, kernel_w, stride_w, dilation_w)
    channel_of = _pooled_channel(out_channels, structure.groups, reduced_per_group, block)
    channel = te.reduce_axis((0, reduced_per_group), name="rc")
    row = te.reduce_axis((0, kernel_h), name="ry")
    column = te.reduce_axis((0, kernel_w), name="rx")
    return te.compute(
        (batch, out_h, out_w, out_channels),
        lambda b, y, x, o: te.sum(
            pooled[
                b,
                y * stride_h + row * dilation_h,
                x * stride_w + column * dilation_w,
                channel_of(o, channel),
            ].astype(out_dtype)
            * packed_alpha[o // block, row, column, channel, o % block].astype(out_dtype),
            axis=[row, column, channel],
        ),
        name="structured_conv2d",
        tag="structured_conv2d_nhwc",
        attrs={"schedule_rule": SCHEDULE_RULE},
    )


def _pooled_channel(out_channels: int, groups: int, reduced_per_group: int, block: int) -> Callable:
    """``(o, r) ↦`` channel of ``S`` that output ``o`` reads as its ``r``-th reduced channel.

    Written so that, once the output channel is split by ``block``, the group index is free of
    the lane index whenever a block lies inside one group (the schedule vectorizes over lanes).
    """
    per_group = out_channels // groups
    if groups == 1:
        return lambda o, r: r
    if per_group % block == 0:
        return lambda o, r: (o // block) // (per_group // block) * reduced_per_group + r
    return lambda o, r: (o // per_group) * reduced_per_group + r


def structured_dense(
    data: te.Tensor, alpha: te.Tensor, structure: Structure, out_dtype: Optional[str] = None
) -> te.Tensor:
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
