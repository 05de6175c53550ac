"""Simple CPU schedules for the rest of a CNN: pools, global pooling, dense, elementwise.

Two dlight-style rules (``apply`` returns ``None`` for a function that is not its kind):

* :class:`ChannelReduction` — one reduction block whose innermost spatial axis is the
  innermost axis of its output (NHWC max-pool and global average pool, ``x @ Wᵀ`` with the
  transposed weight folded to a constant), with injective blocks before it (padding, inlined)
  and after it (bias, divide: inlined into the write-back). Parallel over the outer spatial
  axes, reduction loops next, a vector of output channels innermost, accumulated in registers.
* :class:`Injective` — only spatial blocks (layout transposes, reshapes, elementwise ops that
  did not fuse into a conv): producers inlined, the last block parallel over its outer loops
  and vectorized along its innermost one.

And :class:`Fallback`, the last rule, for any function no other rule took (one whose shape a
template does not know): intermediate blocks inlined where TVM allows, each remaining block
parallel over its outer spatial loops. Correct and multi-threaded, never tiled; its purpose
is that no function is ever left without a schedule or crashes the build.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target
from tvm.tirx import analysis

from tvm_structconv.schedules.target_info import (
    extent,
    vector_lanes,
    vector_split,
    vector_widths,
)

__all__ = [
    "ChannelReduction",
    "Fallback",
    "Injective",
    "inline_where_possible",
    "schedule_elementwise",
]

#: Below this much work (output elements × reduction length) a function runs on one thread:
#: waking the thread pool costs microseconds.
PARALLEL_MIN_WORK = 16384
#: Vector registers of independent accumulators per reduction tile (hides the add latency).
REDUCTION_REGISTERS = 4


def _root_blocks(sch: s_tir.Schedule) -> List[s_tir.schedule.SBlockRV]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_spatial(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _loops_match_iters(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether the block has one loop per iteration variable (as TE creates them)."""
    return len(sch.get_loops(block)) == len(sch.get(block).iter_vars)


def _work(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int:
    """Iterations of ``block``: the product of its iteration domain."""
    total = 1
    for iter_var in sch.get(block).iter_vars:
        total *= int(iter_var.dom.extent)
    return total


def _llvm_schedule(func: tirx.PrimFunc, target: Target) -> Optional[s_tir.Schedule]:
    """A schedule of ``func`` when it is a PrimFunc compiled for an LLVM target, else ``None``."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    return s_tir.Schedule(func)


def inline_where_possible(sch: s_tir.Schedule, blocks: Sequence[s_tir.schedule.SBlockRV]) -> None:
    """Inline each of ``blocks`` into its consumers; a block TVM cannot inline stays."""
    for block in blocks:
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass


def _parallel(sch: s_tir.Schedule, loops: list, work: int) -> None:
    """Fuse ``loops`` and mark them parallel, unless there is too little work."""
    loops = [loop for loop in loops if loop is not None]
    if not loops or work < PARALLEL_MIN_WORK:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)


class Injective(ScheduleRule):
    """Functions of spatial blocks only: inline, parallelize, vectorize the innermost loop."""

    def apply(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func``, or ``None`` when a block has a reduction."""
        sch = _llvm_schedule(func, target)
        if sch is None:
            return None
        blocks = _root_blocks(sch)
        if not blocks or not all(_is_spatial(sch, b) for b in blocks):
            return None
        inline_where_possible(sch, blocks[:-1])
        schedule_elementwise(sch, blocks[-1], target)
        return sch


def schedule_elementwise(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: Target
) -> None:
    """Parallelize a spatial block over its outer loops and vectorize its innermost loop."""
    loops = sch.get_loops(block)
    if not loops:
        return
    outer = vector_split(sch, loops[-1], vector_lanes(target), REDUCTION_REGISTERS)
    _parallel(sch, [*loops[:-1], outer], _work(sch, block))


class ChannelReduction(ScheduleRule):
    """One reduction over outer axes with the output's innermost axis kept (pools, dense)."""

    def apply(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func``, or ``None`` when it is not of that shape."""
        sch = _llvm_schedule(func, target)
        if sch is None:
            return None
        blocks = _root_blocks(sch)
        reductions = [b for b in blocks if not _is_spatial(sch, b)]
        if len(reductions) != 1 or not _loops_match_iters(sch, reductions[0]):
            return None
        reduction = reductions[0]
        position = [sch.get(b).same_as(sch.get(reduction)) for b in blocks].index(True)
        producers, epilogue = blocks[:position], blocks[position + 1 :]
        stmt = sch.get(reduction)
        kinds = [iv.iter_type for iv in stmt.iter_vars]
        spatial = [i for i, kind in enumerate(kinds) if kind == tirx.IterVar.DataPar]
        if not spatial or not _vectorizable_along(stmt, stmt.iter_vars[spatial[-1]].var):
            return None
        try:
            for block in producers:
                sch.compute_inline(block)
            for block in epilogue[:-1]:
                sch.compute_inline(block)
        except s_tir.ScheduleError:
            return None

        loops = sch.get_loops(reduction)
        spatial_loops = [loops[i] for i in spatial]
        reduce_loops = [loop for i, loop in enumerate(loops) if i not in spatial]
        channel_outer, channel_inner = _split_vector(sch, spatial_loops[-1], vector_lanes(target))
        outer = [*spatial_loops[:-1], channel_outer]
        sch.reorder(*outer, *reduce_loops, channel_inner)
        write_back = sch.cache_write(reduction, 0, "local")
        _parallel(sch, outer, _work(sch, reduction))
        # loops now: outer (fused or not), the reduction loops, the channel vector
        loops = sch.get_loops(reduction)
        first_reduce = len(loops) - 1 - len(reduce_loops)
        sch.reverse_compute_at(write_back, loops[first_reduce - 1], preserve_unit_loops=True)
        if epilogue:
            sch.reverse_compute_inline(epilogue[-1])
        # vectorize each block's own channel loop, never a loop the blocks share; the
        # reduction's before decompose_reduction (after it, it is no reduction block)
        _vectorize_own(sch, reduction, first_reduce)
        init = sch.decompose_reduction(reduction, loops[first_reduce])
        _vectorize_own(sch, write_back, first_reduce)
        _vectorize_own(sch, init, first_reduce)
        return sch


def _vectorize_own(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, depth: int) -> None:
    """Vectorize the innermost of ``block``'s loops below the ``depth`` loops it shares."""
    own = sch.get_loops(block)[depth:]
    if own and extent(sch, own[-1]) > 1:
        sch.vectorize(own[-1])


def _uses(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    return any(free.same_as(var) for free in analysis.undefined_vars(expr))


def _vectorizable_along(stmt: tirx.SBlock, var: tirx.Var) -> bool:
    """Whether ``var`` indexes the output's last axis and every read contiguously or not at all.

    Vectorizing along it then gives whole vector loads (or a broadcast), never a gather.
    """
    last = stmt.writes[0].region[-1].min
    if not (isinstance(last, tirx.Var) and last.same_as(var)):
        return False
    for read in stmt.reads:
        indices = [axis.min for axis in read.region]
        if any(_uses(index, var) for index in indices[:-1]):
            return False
    return True


def _split_vector(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int):
    """Split ``loop`` into (outer, vector of up to ``REDUCTION_REGISTERS`` registers)."""
    width = max(vector_widths(extent(sch, loop), lanes, REDUCTION_REGISTERS))
    return sch.split(loop, [None, width])


class Fallback(ScheduleRule):
    """Any LLVM function: inline what TVM allows, then parallelize each block's outer loops."""

    def apply(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A correct, parallel schedule of ``func``; ``None`` only for a non-LLVM target."""
        sch = _llvm_schedule(func, target)
        if sch is None:
            return None
        inline_where_possible(sch, _root_blocks(sch)[:-1])
        for block in _root_blocks(sch):
            if not _loops_match_iters(sch, block):
                continue
            kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
            leading = (
                len(kinds)
                if tirx.IterVar.CommReduce not in kinds
                else kinds.index(tirx.IterVar.CommReduce)
            )
            _parallel(sch, sch.get_loops(block)[:leading], _work(sch, block))
        return sch
