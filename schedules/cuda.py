"""CUDA schedule of the fused structured conv.

dlight's default GPU rules run ``Reduction`` before ``Fallback``; ``Reduction`` asserts on the
pool stages of the fused op (they read a window, not a point) instead of declining, so the
project schedules its own functions first: :class:`StructuredConv2dFallback` gives every
function holding the ``structured_conv2d`` block dlight's ``Fallback`` schedule (spatial loops
bound to blocks and threads, the reduction serial per thread). It is correct, not fast: a
schedule with shared-memory tiles of S per thread block is the next step, and needs a GPU to
be measured.
"""

from __future__ import annotations

from typing import Optional

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from tvm_structconv.ops import find_structured_block

__all__ = ["StructuredConv2dFallback"]


class StructuredConv2dFallback(ScheduleRule):
    """dlight ``Fallback`` for functions with the fused structured conv; ``None`` for others."""

    def apply(self, func: tirx.PrimFunc, target: Target,
              tunable: bool) -> Optional[s_tir.Schedule]:
        """Schedule ``func`` if it holds the fused structured conv."""
        if not isinstance(func, tirx.PrimFunc) or find_structured_block(func) is None:
            return None
        return dlight.gpu.Fallback().apply(func, target, tunable)
