"""Block and loop helpers the CPU rules share: root blocks, their kinds, inlining, parallel."""

from __future__ import annotations

from typing import List, Sequence

from tvm import s_tir, tirx

__all__ = [
    "PARALLEL_MIN_WORK",
    "VECTOR_REGISTERS",
    "inline_where_possible",
    "is_spatial",
    "loops_match_iters",
    "parallelize",
    "root_blocks",
    "work",
]

#: Below this much work (output elements × reduction length) a function runs on one thread:
#: waking the thread pool costs microseconds.
PARALLEL_MIN_WORK = 16384
#: Vector registers one innermost vector loop may span (independent accumulators of a
#: reduction hide the add latency; an elementwise op is unrolled over them).
VECTOR_REGISTERS = 4


def root_blocks(sch: s_tir.Schedule) -> List[s_tir.schedule.SBlockRV]:
    """The blocks directly under the function's root block, in order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_spatial(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether every iteration variable of ``block`` is spatial (no reduction)."""
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def loops_match_iters(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether the block has one loop per iteration variable (as TE creates them)."""
    return len(sch.get_loops(block)) == len(sch.get(block).iter_vars)


def work(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> int:
    """Iterations of ``block``: the product of its iteration domain."""
    total = 1
    for iter_var in sch.get(block).iter_vars:
        total *= int(iter_var.dom.extent)
    return total


def inline_where_possible(sch: s_tir.Schedule, blocks: Sequence[s_tir.schedule.SBlockRV]) -> None:
    """Inline each of ``blocks`` into its consumers; a block TVM cannot inline stays."""
    for block in blocks:
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass


def parallelize(sch: s_tir.Schedule, loops: list, amount: int) -> None:
    """Fuse ``loops`` and mark them parallel, unless ``amount`` of work is too little."""
    loops = [loop for loop in loops if loop is not None]
    if not loops or amount < PARALLEL_MIN_WORK:
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(fused)
