"""CPU rule of the fused structured conv (x86, AArch64, any LLVM CPU), NHWC with packed ``alpha``.

The template, written for :func:`tvm_structconv.ops.structured_conv2d_nhwc` (the trivial
structure, i.e. an ordinary conv, included; so also every 1×1 conv, depthwise and grouped conv,
and every Linear layer the rewrites emit as a 1×1 conv):

* ``parallel`` over fused (batch, block of output rows, chunk of output-channel blocks);
* ``S`` (the padded input for an ordinary conv; the pool stages, with the padding inlined into
  the first of them, for a structured one) computed per task with ``compute_at``, vectorized
  over channels, and shared by every output-channel block of the task — never written whole;
* inside a task: output-channel block → row → pixel tile → kernel row → kernel column → input
  channel → pixels of the tile (unrolled) → output channels of the block (vectorized);
* the accumulator of one tile (``pixels × block`` lanes) is a ``cache_write`` to ``local``
  sized to fit the vector registers next to the weight vectors and one broadcast;
* the fused epilogue (bias, ReLU/ReLU6, residual add …) is inlined into the write-back of the
  accumulator, so it costs one pass over the tile while it is in registers;
* ``decompose_reduction`` last, then the init block is vectorized.

Tile sizes (:mod:`~tvm_structconv.schedules.cpu.tiling`) come from the target's vector width
and register count, read off its features (``avx512f``, ``avx2``, ``neon`` …), never from the
machine compiling. On AArch64 the rule unrolls
:func:`~tvm_structconv.schedules.cpu.tiling.channel_unroll` input channels inside the pixel
loop (NEON's FMA by element); elsewhere the same rule keeps the channel loop outside.

Measured for AArch64 only for correctness (under qemu, ``tests/test_deploy_qemu.py``): no
AArch64 board was available; the tests check that LLVM emits by-element ``fmla``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from tvm_structconv.ops import SCHEDULE_RULE, schedule_of_conv, stages_around
from tvm_structconv.schedules.base import TargetRule, schedule_whole_function
from tvm_structconv.schedules.cpu.blocks import inline_where_possible
from tvm_structconv.schedules.cpu.injective import schedule_elementwise
from tvm_structconv.schedules.cpu.tiling import (
    MAX_ROWS,
    ConvTiling,
    channel_unroll,
    choose_tiling,
    pixel_bound,
)
from tvm_structconv.schedules.target_info import (
    extent,
    vector_lanes,
    vector_partition,
    vector_registers,
)

__all__ = [
    "StructuredConv2dRule",
    "host_target",
    "schedule_structured_conv2d",
    "schedule_tail",
    "split_epilogue",
]

#: Producer stages that only move data: inlined into the first window sum when there is one.
INLINED_STAGES = ("pad", "subsample")


def _schedule_stage(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Vectorize a producer stage (pad copy, window sum) over its channel axis.

    In whole registers (:func:`~tvm_structconv.schedules.target_info.vector_partition`): the
    doubling stages of a channel window have odd lengths (255, 253, 249 … of 256 channels),
    which no vector width divides; vectorized whole, a structured 1×1 conv runs 10–20 % faster.
    A stage TVM refuses to vectorize stays scalar: when a stride skips pooled rows, the stage
    computed per task does not write its buffer densely and ``vectorize`` reports no
    compact dataflow.
    """
    try:
        vector_partition(sch, sch.get_loops(block)[-1], lanes)
    except s_tir.ScheduleError:
        pass


def _is_nhwc_conv(sch: s_tir.Schedule, conv: s_tir.schedule.SBlockRV) -> bool:
    """Whether ``conv`` is the NHWC compute (5-D packed ``alpha``, seven loops)."""
    stmt = sch.get(conv)
    return (
        len(stmt.reads) == 2
        and len(stmt.reads[1].source.shape) == 5
        and len(stmt.iter_vars) == 7
        and len(sch.get_loops(conv)) == 7
    )


def split_epilogue(
    sch: s_tir.Schedule, conv: s_tir.schedule.SBlockRV, epilogue: Sequence[s_tir.schedule.SBlockRV]
) -> Tuple[list, list]:
    """The fused epilogue blocks a register tile can apply (head), and the rest (tail).

    The head is the longest prefix of ``epilogue`` that is elementwise over the conv's output:
    each block is spatial, writes one buffer of the conv output's shape at its own iteration
    variables in order, and reads the conv's output and earlier head blocks' outputs at those
    same indices (other inputs, a bias or a residual, it reads as it likes). The tail starts at
    the first block that is not (an SE block's gate broadcast onto a larger tensor).
    """
    conv_write = sch.get(conv).writes[0].source
    shape = [int(d) for d in conv_write.shape]
    produced = [conv_write]
    for position, block in enumerate(epilogue):
        stmt = sch.get(block)
        if not _elementwise_over(stmt, shape, produced):
            return list(epilogue[:position]), list(epilogue[position:])
        produced.append(stmt.writes[0].source)
    return list(epilogue), []


def _elementwise_over(
    stmt: tirx.SBlock, shape: Sequence[int], produced: Sequence[tirx.Buffer]
) -> bool:
    """Whether ``stmt`` maps ``shape`` elementwise onto itself, reading ``produced`` in place."""
    if len(stmt.writes) != 1 or any(iv.iter_type != tirx.IterVar.DataPar for iv in stmt.iter_vars):
        return False
    variables = [iv.var for iv in stmt.iter_vars]

    def in_place(region) -> bool:
        return len(region) == len(variables) and all(
            r.min.same_as(v) and int(r.extent) == 1 for r, v in zip(region, variables)
        )

    write = stmt.writes[0]
    if [int(d) for d in write.source.shape] != list(shape) or not in_place(write.region):
        return False
    return all(
        in_place(read.region)
        for read in stmt.reads
        if any(read.source.same_as(buffer) for buffer in produced)
    )


def schedule_tail(
    sch: s_tir.Schedule, tail: Sequence[s_tir.schedule.SBlockRV], target: Target
) -> None:
    """Schedule epilogue blocks left after the conv: inlined into one parallel vector pass."""
    inline_where_possible(sch, tail[:-1])
    if tail and all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(tail[-1]).iter_vars):
        schedule_elementwise(sch, tail[-1], target)


def _split(
    sch: s_tir.Schedule,
    loop: s_tir.schedule.LoopRV,
    outer: Optional[int],
    inner: Optional[int],
    max_inner: int,
    tunable: bool,
) -> list:
    """Split ``loop`` in two at the hand choice, or at a sampled perfect tiling if ``tunable``.

    A sampled split draws any ``(outer, inner)`` with ``inner ≤ max_inner`` (``-1``: any) from
    the schedule's random state; MetaSchedule's tile-size mutator then moves it.
    """
    if not tunable:
        return sch.split(loop, [outer, inner])
    return sch.split(loop, sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max_inner))


def schedule_structured_conv2d(
    sch: s_tir.Schedule,
    conv: s_tir.schedule.SBlockRV,
    target: Target,
    tiling: Optional[ConvTiling] = None,
    tunable: bool = False,
    unroll: Optional[int] = None,
) -> bool:
    """Schedule the NHWC structured conv ``conv``, its producer stages and fused epilogue in place.

    Parameters
    ----------
    sch
        A schedule of a PrimFunc made of, in order: optional pad / pool stages, ``conv``, and
        optional elementwise epilogue blocks over the conv's output (what ``FuseOps`` fuses).
    conv
        The block with ``schedule_rule = "structured_conv2d"``.
    target
        An LLVM target; vector width and register count are read from it.
    tiling
        Tile sizes; :func:`choose_tiling` when ``None``.
    tunable
        Sample the tile sizes (rows per task, pixels per tile up to what the registers hold,
        output-channel chunks) instead of choosing them: the design space MetaSchedule
        searches. The packing block of ``alpha`` is fixed at compile time and is not sampled.
    unroll
        Input channels unrolled inside the pixel loop (when they divide the reduced channels):
        the ``unroll`` consecutive channels of ``S`` at one pixel are one vector load, whose
        lanes feed the FMAs (AArch64's by-element ``fmla``) instead of one broadcast load per
        channel. ``1`` (x86: a broadcast is a free memory operand of ``vfmadd``) keeps the
        channel loop outside the pixels; ``None``:
        :func:`~tvm_structconv.schedules.cpu.tiling.channel_unroll` of ``target``.

    Returns
    -------
    bool
        ``False`` (and ``sch`` untouched) when the function is not of that shape.
    """
    if not _is_nhwc_conv(sch, conv):
        return False
    unroll = channel_unroll(target) if unroll is None else unroll
    producers, epilogue = stages_around(sch, conv)
    stmt = sch.get(conv)
    out_shape = [int(d) for d in stmt.writes[0].source.shape]
    block = int(stmt.reads[1].source.shape[-1])
    batch, out_height, out_width, out_channels = out_shape
    # bytes between consecutive pixels of what each tile reads (S or the input) and writes
    strides = [
        int(buffer.shape[-1]) * buffer.dtype.bits // 8
        for buffer in (stmt.reads[0].source, stmt.writes[0].source)
    ]
    if tiling is None:
        tiling = choose_tiling(
            batch, out_height, out_width, out_channels, block, target, unroll, strides
        )
    lanes = vector_lanes(target)

    # the epilogue: its elementwise head becomes one block, reverse-inlined into the
    # write-back below; a tail the tile cannot hold (an SE block's broadcast multiply onto
    # a larger tensor) runs after the conv as an elementwise pass of its own
    head, tail = split_epilogue(sch, conv, epilogue)
    for extra in head[:-1]:
        sch.compute_inline(extra)
    schedule_tail(sch, tail, target)

    b, y, x, o, ry, rx, rc = sch.get_loops(conv)
    o_block, o_lane = sch.split(o, [None, block])
    chunk, o_inner = _split(sch, o_block, tiling.chunks, None, -1, tunable)
    y_task, y_row = _split(sch, y, None, tiling.rows, MAX_ROWS, tunable)
    budget = pixel_bound(out_width, block, lanes, vector_registers(target), unroll, strides)
    x_tile, x_pixel = _split(sch, x, None, tiling.pixels, budget, tunable)
    if unroll > 1 and extent(sch, rc) % unroll == 0 and extent(sch, rc) > 1:
        rc, rc_lane = sch.split(rc, [None, unroll])
        sch.reorder(b, y_task, chunk, o_inner, y_row, x_tile, ry, rx, rc, x_pixel, rc_lane, o_lane)
        sch.unroll(rc_lane)
        # the pixel's unroll values of S: one vector load into registers
        s_vector = sch.cache_read(conv, 0, "local")
        sch.compute_at(s_vector, x_pixel, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(s_vector)[-1])
    else:
        sch.reorder(b, y_task, chunk, o_inner, y_row, x_tile, ry, rx, rc, x_pixel, o_lane)
    task = sch.fuse(b, y_task, chunk)
    sch.parallel(task)
    write_back = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(write_back, x_tile, preserve_unit_loops=True)
    if head:
        sch.reverse_compute_inline(head[-1])

    # S: padding and subsampling inlined into the first window sum; each stage computed per task
    while len(producers) > 1 and sch.get(producers[0]).name_hint.startswith(INLINED_STAGES):
        sch.compute_inline(producers[0])
        producers = producers[1:]
    for producer in reversed(producers):
        sch.compute_at(producer, task, preserve_unit_loops=True)
    for producer in producers:
        _schedule_stage(sch, producer, lanes)

    if extent(sch, rc) <= 4:
        sch.unroll(rc)
    sch.unroll(x_pixel)
    if block > 1:
        sch.vectorize(o_lane)
    init = sch.decompose_reduction(conv, ry)
    # the write-back's and the init's own (pixel, lane) loops (unit loops kept): likewise
    for other in (write_back, init):
        pixel_loop, lane_loop = sch.get_loops(other)[-2:]
        sch.unroll(pixel_loop)
        if block > 1:
            sch.vectorize(lane_loop)
    return True


class StructuredConv2dRule(TargetRule):
    """The dlight-style rule: schedules a PrimFunc holding an NHWC structured conv, else ``None``.

    One rule for every LLVM CPU: the NEON channel unroll is read off the target. A function of
    that kind that the template cannot handle is answered ``None`` too, and left to the other
    rules: :class:`~tvm_structconv.schedules.cpu.fallback.Fallback` last.
    """

    def schedule(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func`` for ``target``, or ``None`` when ``func`` is not this op."""
        found = schedule_of_conv(func)
        if found is None:
            return None
        sch, conv = found
        return sch if schedule_structured_conv2d(sch, conv, target) else None


@tvm.register_global_func(f"s_tir.meta_schedule.cpu.{SCHEDULE_RULE}", override=True)
def _meta_schedule_rule(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV
) -> Sequence[s_tir.Schedule]:
    """MetaSchedule custom rule for the block's ``schedule_rule``: two design spaces.

    The hand schedule with sampled tile sizes (what tuning searches) and the hand schedule as
    it is (so the untuned choice is among the candidates).

    MetaSchedule looks custom rules up by the target's *keys* (``cpu`` for ``llvm``), as
    ``s_tir.meta_schedule.<key>.<rule>``, and calls them without a target in scope while it
    generates design spaces: the target is then this host (all its cores).
    """
    target = Target.current(allow_none=True) or host_target()
    if not _is_nhwc_conv(sch, block):
        return [sch]  # the NCHW compute: MetaSchedule's own rules schedule it
    spaces = []
    for tunable in (True, False):
        space = sch.copy()
        schedule_structured_conv2d(space, block, target, tunable=tunable)
        schedule_whole_function(space, block)
        spaces.append(space)
    return spaces


def host_target() -> Target:
    """This host's CPU with all its cores: the target of a rule called without one in scope."""
    return Target(
        {
            "kind": "llvm",
            "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
            "num-cores": len(os.sched_getaffinity(0)),
        }
    )
