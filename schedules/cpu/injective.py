"""CPU rule for functions of spatial blocks only: layout transposes, reshapes, elementwise ops.

:class:`Injective` inlines the producers, then the last block runs parallel over its outer
loops and vectorized along its innermost one (:func:`schedule_elementwise`, which the conv
rule also uses for an epilogue its register tile cannot hold).

A concatenation along the innermost axis (NHWC channels: DenseNet, GoogLeNet, SqueezeNet)
inlines into a chain of ``if_then_else`` choosing the input by channel, which no vector loop
runs well; the innermost loop is then partitioned at the inputs' boundaries, so each part
reads one input at a fixed offset and vectorizes plainly (DenseNet's concat + BatchNorm +
ReLU of 13 inputs into 28×28×512: 0.70 -> 0.03 ms).
"""

from __future__ import annotations

import math
from typing import List, Optional

from tvm import s_tir, sym, tirx
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
from tvm_structconv.schedules.target_info import (
    extent,
    vector_lanes,
    vector_split,
    vector_widths,
)

__all__ = ["Injective", "concat_boundaries", "schedule_elementwise"]


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
    """Parallelize a spatial block over its outer loops and vectorize its innermost loop.

    Where the block reads several inputs at different offsets along the innermost loop
    (:func:`concat_boundaries`) and whole vector registers fit between the boundaries, the
    loop of vectors is partitioned at them, so each vector reads one input.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    amount = work(sch, block)
    whole = len(loops) == len(sch.get(block).iter_vars)
    boundaries = concat_boundaries(sch, block) if whole else []
    lanes = vector_lanes(target)
    common = math.gcd(extent(sch, loops[-1]), *boundaries)
    width = max(vector_widths(common, lanes, VECTOR_REGISTERS))
    if boundaries and width % lanes == 0:
        # vectors inside one input each: the vector loop splits off first, the loop of
        # vectors is partitioned at the inputs' boundaries
        vectors, inner = sch.split(loops[-1], [None, width])
        sch.vectorize(inner)
        sch.loop_partition(
            vectors, [(b - a) // width for a, b in zip([0, *boundaries], boundaries)] + [None]
        )
        parallelize(sch, loops[:-1], amount)
        return
    outer = vector_split(sch, loops[-1], lanes, VECTOR_REGISTERS)
    parallelize(sch, [*loops[:-1], outer], amount)


def concat_boundaries(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> List[int]:
    """Where along its innermost axis ``block`` switches from reading one input to the next.

    The constant offsets ``k`` of reads indexed ``v − k`` by the innermost iteration variable
    ``v`` (a concatenation reads input ``i`` at ``v − start_i``), inside the axis, ascending;
    ``[]`` when every read has the same offset.
    """
    stmt = sch.get(block)
    last = stmt.iter_vars[-1]
    analyzer = sym.Analyzer()
    offsets = set()
    for read in stmt.reads:
        if not read.region:
            continue
        delta = analyzer.simplify(last.var - read.region[-1].min)
        if isinstance(delta, tirx.IntImm):
            offsets.add(int(delta.value))
    length = int(last.dom.extent)
    return sorted(k for k in offsets if 0 < k < length)
