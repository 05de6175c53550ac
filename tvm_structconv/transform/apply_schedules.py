"""Apply the project's hand schedules to every not yet scheduled PrimFunc of a module.

A module pass over TIR, to run after ``FuseOps``/``FuseTIR`` (so a conv's fused epilogue is
in its function). For an LLVM target the rules are tried in order, the first that answers
wins (dlight's ``ApplyDefaultSchedule``; a rule answers ``None`` for a function not its kind):

1. :class:`~tvm_structconv.schedules.cpu.conv.StructuredConv2dRule` — a function holding the
   NHWC fused structured conv (``schedule_rule = "structured_conv2d"``), ordinary convs and
   Linear layers emitted with the trivial structure included (NEON form on AArch64);
2. :class:`~tvm_structconv.schedules.cpu.reduction.ChannelReduction` — pools, global pooling;
3. :class:`~tvm_structconv.schedules.cpu.injective.Injective` — transposes, reshapes,
   elementwise ops;
4. :class:`~tvm_structconv.schedules.cpu.fallback.Fallback` — anything else (a rule above that
   meets a function it cannot schedule declines it): inlined where possible, outer loops
   parallel.

Every function a rule scheduled gets ``tirx.is_scheduled``; so every PrimFunc of an LLVM build
is scheduled, and a function no template knows is slow at worst, never a failed build. For a
CUDA target only the functions holding the fused conv are scheduled
(:class:`~tvm_structconv.schedules.gpu.conv.StructuredConv2dCUDA`: shared-memory tiles); dlight's
default GPU rules then schedule the rest. Other target kinds are returned unchanged.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import dlight

from tvm_structconv.schedules import rules_for

__all__ = ["ApplySchedules"]


@tvm.transform.module_pass(opt_level=0, name="ApplySchedules")
class ApplySchedules:
    """Schedule every PrimFunc of the module for ``target`` with the project's rules.

    Parameters
    ----------
    target
        The compilation target; ``llvm`` and ``cuda`` targets are scheduled.
    """

    def __init__(self, target: tvm.target.Target) -> None:
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with its PrimFuncs scheduled."""
        rules = rules_for(self.target)
        if not rules:
            return mod
        with self.target:
            # dlight's pass writes the scheduled functions into the module it is given
            return dlight.ApplyDefaultSchedule(*rules)(mod.clone())
