"""The last CPU rule: any function no other rule took gets a correct, parallel schedule.

A function whose shape no template knows: intermediate blocks inlined where TVM allows, each
remaining block parallel over its outer spatial loops. Never tiled; its purpose is that no
function is ever left without a schedule or crashes the build.
"""

from __future__ import annotations

from typing import Optional

from tvm import s_tir, tirx
from tvm.target import Target

from tvm_structconv.schedules.base import TargetRule
from tvm_structconv.schedules.cpu.blocks import (
    inline_where_possible,
    loops_match_iters,
    parallelize,
    root_blocks,
    work,
)

__all__ = ["Fallback"]


class Fallback(TargetRule):
    """Any CPU function: inline what TVM allows, then parallelize each block's outer loops."""

    def schedule(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A correct, parallel schedule of ``func``."""
        sch = s_tir.Schedule(func)
        inline_where_possible(sch, root_blocks(sch)[:-1])
        for block in root_blocks(sch):
            if not loops_match_iters(sch, block):
                continue
            kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
            leading = (
                len(kinds)
                if tirx.IterVar.CommReduce not in kinds
                else kinds.index(tirx.IterVar.CommReduce)
            )
            parallelize(sch, sch.get_loops(block)[:leading], work(sch, block))
        return sch
