"""x86 (and any LLVM CPU) hand schedule of the fused structured conv, NHWC with packed ``alpha``.

The CPU template, written for :func:`tvm_structconv.ops.structured_conv2d_nhwc`
(the trivial structure, i.e. an ordinary conv, included):

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

Vector width and register count come from the target's features (``avx512f``, ``avx2``,
``neon`` …), never from the machine compiling. ``llvm_get_vector_width`` is not used: in TVM 0.27
it answers 512 for every x86 CPU, AVX2-only ones included.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from tvm_structconv.ops import SCHEDULE_RULE, schedule_of_conv, stages_around
from tvm_structconv.schedules.cpu import inline_where_possible, schedule_elementwise
from tvm_structconv.schedules.target_info import (
    divisors,
    extent,
    target_cores,
    vector_lanes,
    vector_registers,
    vector_split,
    vector_widths,
)

__all__ = [
    "SCHEDULE_FAILURES",
    "ConvTiling",
    "block_size_for",
    "StructuredConv2dRule",
    "channel_block",
    "choose_tiling",
    "schedule_structured_conv2d",
    "schedule_tail",
    "split_epilogue",
]

#: What a schedule primitive raises on a function it cannot transform: a rule then declines.
#: (``InternalError`` is TVM's failed internal check, e.g. inlining a block it cannot.)
SCHEDULE_FAILURES = (s_tir.ScheduleError, tvm.error.InternalError)
#: Largest number of output rows one parallel task computes (bounds the ``S`` tile).
MAX_ROWS = 8
#: Producer stages that only move data: inlined into the first window sum when there is one.
INLINED_STAGES = ("pad", "subsample")
#: Independent accumulators needed to hide the FMA latency (2 pipes × 4 cycles).
MIN_ACCUMULATORS = 8


def _pixel_tile(
    out_width: int, block: int, lanes: int, registers: int, channel_unroll: int = 1
) -> int:
    """Pixels per accumulator tile: the largest divisor of the width that fits the registers.

    Next to the accumulators: the block's weight vectors (of ``channel_unroll`` input
    channels), one broadcast and one spare register (a tile using all 16 AVX2 registers
    spilled and ran at half speed).
    """
    return max(divisors(out_width, _pixel_budget(block, lanes, registers, channel_unroll)))


def _pixel_budget(block: int, lanes: int, registers: int, channel_unroll: int = 1) -> int:
    """Most pixels of ``block`` output channels whose accumulators fit the vector registers."""
    vectors = -(-block // lanes)
    return max((registers - vectors * channel_unroll - 2) // vectors, 1)


def _tile_score(out_width: int, block: int, lanes: int, registers: int) -> float:
    """Expected fraction of peak of one tile shape: latency hiding × load intensity × lane use."""
    vectors = -(-block // lanes)
    pixels = _pixel_tile(out_width, block, lanes, registers)
    accumulators = pixels * vectors
    latency = min(1.0, accumulators / MIN_ACCUMULATORS)
    intensity = min(1.0, accumulators / (pixels + vectors))
    return latency * intensity * block / (vectors * lanes)


def channel_block(target: Target, out_channels: int, groups: int, out_width: int) -> int:
    """The output-channel block to pack ``alpha`` with for this layer on ``target``.

    A divisor of ``out_channels`` (and of the outputs per group for a grouped conv with several
    outputs per group) of at most two vector registers, whole registers or a power of two
    (:func:`~tvm_structconv.schedules.target_info.vector_widths`), picked by
    :func:`_tile_score`: on AVX2 a 7-wide output gets one register of channels × 7 pixels
    rather than two × 1.
    """
    lanes, registers = vector_lanes(target), vector_registers(target)
    per_group = out_channels // groups
    bound = out_channels if groups == 1 or per_group == 1 else per_group
    candidates = vector_widths(bound, lanes, 2)
    return max(candidates, key=lambda d: (round(_tile_score(out_width, d, lanes, registers), 3), d))


@dataclass(frozen=True)
class ConvTiling:
    """The tile sizes of one conv.

    Attributes
    ----------
    block
        Output channels per accumulator tile (the packing block of ``alpha``).
    pixels
        Output pixels of one row per accumulator tile (unrolled).
    rows
        Output rows per parallel task.
    chunks
        Parallel chunks the output-channel blocks are cut into (``S`` is recomputed per chunk).
    """

    block: int
    pixels: int
    rows: int
    chunks: int


def choose_tiling(
    batch: int,
    out_height: int,
    out_width: int,
    out_channels: int,
    block: int,
    target: Target,
    channel_unroll: int = 1,
) -> ConvTiling:
    """Tile sizes for an ``(batch, out_height, out_width, out_channels)`` NHWC output.

    Rows and chunks give every core the same number of tasks where possible, then the most rows
    per task (less ``S`` overlap recomputed between tasks), then the fewest chunks.
    """
    lanes, registers, cores = vector_lanes(target), vector_registers(target), target_cores(target)
    pixels = _pixel_tile(out_width, block, lanes, registers, channel_unroll)
    best: Optional[Tuple[tuple, int, int]] = None
    for rows in divisors(out_height, MAX_ROWS):
        for chunks in divisors(out_channels // block, cores):
            tasks = batch * (out_height // rows) * chunks
            balance = tasks / (cores * -(-tasks // cores))
            overlap = rows / (rows + 2)
            score = (round(balance, 2), round(overlap / chunks**0.5, 3), rows)
            if best is None or score > best[0]:
                best = (score, rows, chunks)
    assert best is not None
    return ConvTiling(block, pixels, best[1], best[2])


def _schedule_stage(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """Vectorize a producer stage (pad copy, window sum) over its channel axis.

    A stage TVM refuses to vectorize stays scalar: when a stride skips pooled rows, the stage
    computed per task does not write its buffer densely and ``vectorize`` reports no
    compact dataflow.
    """
    try:
        vector_split(sch, sch.get_loops(block)[-1], lanes)
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
    channel_unroll: int = 1,
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
    channel_unroll
        Input channels unrolled inside the pixel loop (when they divide the reduced channels):
        the ``channel_unroll`` consecutive channels of ``S`` at one pixel are one vector load,
        whose lanes feed the FMAs (AArch64's by-element ``fmla``) instead of one broadcast
        load per channel; see :mod:`tvm_structconv.schedules.arm`. ``1`` (x86: a broadcast is
        a free memory operand of ``vfmadd``) keeps the channel loop outside the pixels.

    Returns
    -------
    bool
        ``False`` (and ``sch`` untouched) when the function is not of that shape.
    """
    if not _is_nhwc_conv(sch, conv):
        return False
    producers, epilogue = stages_around(sch, conv)
    stmt = sch.get(conv)
    out_shape = [int(d) for d in stmt.writes[0].source.shape]
    block = int(stmt.reads[1].source.shape[-1])
    batch, out_height, out_width, out_channels = out_shape
    if tiling is None:
        tiling = choose_tiling(
            batch, out_height, out_width, out_channels, block, target, channel_unroll
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
    pixel_budget = _pixel_budget(block, lanes, vector_registers(target), channel_unroll)
    x_tile, x_pixel = _split(sch, x, None, tiling.pixels, pixel_budget, tunable)
    if channel_unroll > 1 and extent(sch, rc) % channel_unroll == 0 and extent(sch, rc) > 1:
        rc, rc_lane = sch.split(rc, [None, channel_unroll])
        sch.reorder(b, y_task, chunk, o_inner, y_row, x_tile, ry, rx, rc, x_pixel, rc_lane, o_lane)
        sch.unroll(rc_lane)
        # the pixel's channel_unroll values of S: one vector load into registers
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


class StructuredConv2dRule(ScheduleRule):
    """The dlight-style rule: schedules a PrimFunc holding an NHWC structured conv, else ``None``.

    A function of that kind that the template cannot handle is answered ``None`` too (any
    of :data:`SCHEDULE_FAILURES`), and left to the other rules: :class:`~.cpu.Fallback` last.
    """

    def apply(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func`` for ``target``, or ``None`` when ``func`` is not this op."""
        found = schedule_of_conv(func) if target.kind.name == "llvm" else None
        if found is None:
            return None
        sch, conv = found
        try:
            return sch if schedule_structured_conv2d(sch, conv, target) else None
        except SCHEDULE_FAILURES:
            return None


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
    target = Target.current(allow_none=True) or _host_target()
    if not _is_nhwc_conv(sch, block):
        return [sch]  # the NCHW compute: MetaSchedule's own rules schedule it
    from tvm_structconv.schedules import arm  # the NEON form for AArch64 targets

    spaces = []
    for tunable in (True, False):
        space = sch.copy()
        schedule_structured_conv2d(
            space, block, target, tunable=tunable, channel_unroll=arm.channel_unroll(target)
        )
        # the whole function is scheduled: no default rule on the other blocks, nor on the
        # root (whose parallel/vectorize annotation would fail RewriteParallelVectorizeUnroll)
        root = space.get_sblock("root")
        for other in [root, *space.get_child_blocks(root)]:
            if not space.get(other).same_as(space.get(block)):
                space.annotate(other, "schedule_rule", "None")
        spaces.append(space)
    return spaces


def _host_target() -> Target:
    return Target(
        {
            "kind": "llvm",
            "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
            "num-cores": len(os.sched_getaffinity(0)),
        }
    )


def block_size_for(target: Target) -> Callable[[int, int, int], int]:
    """``(out_channels, groups, out_width) -> block``: :func:`channel_block` for ``target``.

    What the conv rewrites pack NHWC kernels with (``block_size`` of
    :class:`~tvm_structconv.transform.RewriteStructuredConv`).
    """
    return functools.partial(channel_block, target)
