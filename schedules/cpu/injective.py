"""CPU rule for functions of spatial blocks only: layout transposes, reshapes, elementwise ops.

:class:`Injective` inlines the producers, then the last block runs parallel over its outer
loops and vectorized along its innermost one (:func:`schedule_elementwise`, which the conv
rule also uses for an epilogue its register tile cannot hold).
"""

from __future__ import annotations

from typing import Optional

from tvm import s_tir, tirx
from tvm.target import Target

from tvm_structconv.schedules.base import TargetRule
from tvm_structconv.schedules.cpu.blocks import (
    VECTOR_REGISTERS,
    inline_where_possible,
    is_spatial,
    parallelize,
    root_blocks,
    work,
)
from tvm_structconv.schedules.target_info import vector_lanes, vector_split

__all__ = ["Injective", "schedule_elementwise"]


class Injective(TargetRule):
    """Functions of spatial blocks only: inline, parallelize, vectorize the innermost loop."""

    def schedule(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func``, or ``None`` when a block has a reduction."""
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        if not blocks or not all(is_spatial(sch, b) for b in blocks):
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
    outer = vector_split(sch, loops[-1], vector_lanes(target), VECTOR_REGISTERS)
    parallelize(sch, [*loops[:-1], outer], work(sch, block))
