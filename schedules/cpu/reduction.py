"""CPU rule for one reduction that keeps the output's innermost axis: pools, global pooling.

:class:`ChannelReduction` takes a function of one reduction block whose innermost spatial axis
is the innermost axis of its output (NHWC max-pool and global average pool, ``x @ Wᵀ`` with the
transposed weight folded to a constant), with injective blocks before it and after it (bias,
divide: inlined into the write-back). Parallel over the outer spatial axes (a pool: over batch
and output rows), reduction loops next, a vector of output channels innermost, accumulated in
registers.

Padding is inlined into the window reads too: its ``if_then_else`` tests the window's row and
column only, one branch per vector, so no padded copy of the input is made. The vector is a
power-of-two number of registers: LLVM turns a conditional read of 3 registers (48 lanes of
AVX-512, e.g. on 528 or 480 channels) into slow code: on 480 channels 6-20x slower than
2-register vectors (28x28 3x3/2: 150 vs 26 us; 14x14 3x3/1: 207 vs 9 us), which is why an
earlier rule copied the padded input instead. Measured on one thread (AVX-512) against that
rule (the padded input rows of each output row copied first): 3x3/2 max-pool of 112x112x64
114 -> 50 us, 14x14x480 stride 1 31 -> 11 us, 7x7x832 13 -> 4 us
(``benchmarks/kernel_compare.py`` puts pools in models next to onnxruntime's).
"""

from __future__ import annotations

from typing import Optional

from tvm import s_tir, tirx
from tvm.target import Target
from tvm.tirx import analysis

from tvm_structconv.schedules.base import TargetRule
from tvm_structconv.schedules.cpu.blocks import (
    VECTOR_REGISTERS,
    is_spatial,
    loops_match_iters,
    parallelize,
    root_blocks,
    work,
)
from tvm_structconv.schedules.target_info import extent, vector_lanes, vector_widths

__all__ = ["ChannelReduction"]


class ChannelReduction(TargetRule):
    """One reduction over outer axes with the output's innermost axis kept (pools, dense)."""

    def schedule(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func``, or ``None`` when it is not of that shape."""
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        reductions = [b for b in blocks if not is_spatial(sch, b)]
        if len(reductions) != 1 or not loops_match_iters(sch, reductions[0]):
            return None
        reduction = reductions[0]
        position = [sch.get(b).same_as(sch.get(reduction)) for b in blocks].index(True)
        producers, epilogue = blocks[:position], blocks[position + 1 :]
        stmt = sch.get(reduction)
        kinds = [iv.iter_type for iv in stmt.iter_vars]
        spatial = [i for i, kind in enumerate(kinds) if kind == tirx.IterVar.DataPar]
        if not spatial or not _vectorizable_along(stmt, stmt.iter_vars[spatial[-1]].var):
            return None
        for block in (*producers, *epilogue[:-1]):
            sch.compute_inline(block)

        loops = sch.get_loops(reduction)
        spatial_loops = [loops[i] for i in spatial]
        reduce_loops = [loop for i, loop in enumerate(loops) if i not in spatial]
        channel_outer, channel_inner = _split_vector(sch, spatial_loops[-1], vector_lanes(target))
        outer = [*spatial_loops[:-1], channel_outer]
        sch.reorder(*outer, *reduce_loops, channel_inner)
        write_back = sch.cache_write(reduction, 0, "local")
        # a pool: (batch, output row) in parallel, the columns and channel vectors inside; a
        # fused parallel loop over columns and channels too left div/mod in every window
        # read's padding test (2-6x slower). Global pooling, dense: every outer loop
        parallelize(sch, outer[:-2] if len(outer) >= 4 else outer, work(sch, reduction))
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
    """Split ``loop`` into (outer, vector of 1, 2 or 4 registers, or less than one).

    A power-of-two number of registers: a padded window's conditional read of 3 registers is
    6-20x slower (LLVM), see the module's docstring.
    """
    widths = [
        width
        for width in vector_widths(extent(sch, loop), lanes, VECTOR_REGISTERS)
        if width <= lanes or (width // lanes) & (width // lanes - 1) == 0
    ]
    return sch.split(loop, [None, max(widths)])
