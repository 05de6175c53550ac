"""AArch64 (NEON) form of the fused conv's CPU template.

The loop nest is the one of :mod:`tvm_structconv.schedules.x86` (which reads the 128-bit NEON
width and the 32 vector registers off the target), with one change for how NEON multiplies:
x86's ``vfmadd231ps`` takes a broadcast input straight from memory, so the x86 order loads one
``S`` value per input channel; AArch64 has no broadcast memory operand (``ld1r`` is a load of
its own) but has FMA *by element* (``fmla v.4s, v.4s, v.s[i]``). So the ARM form unrolls
:func:`channel_unroll` (4) consecutive input channels inside the pixel loop: the four
``S`` values of one pixel are one ``ldr q`` (NHWC: channels are contiguous) and each feeds the
FMAs of one channel by lane, a quarter of the loads per FMA. The register budget of the
accumulator tile counts the four channels' weight vectors.

Measured only for correctness (under qemu, ``tests/test_deploy_qemu.py``): no AArch64 board
was available, so no latency exists; the tests check that LLVM emits by-element ``fmla``.
"""

from __future__ import annotations

from typing import Optional

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from tvm_structconv.ops import schedule_of_conv
from tvm_structconv.schedules.target_info import vector_lanes
from tvm_structconv.schedules.x86 import SCHEDULE_FAILURES, schedule_structured_conv2d

__all__ = ["StructuredConv2dNEONRule", "channel_unroll", "is_aarch64"]


def is_aarch64(target: Target) -> bool:
    """Whether ``target`` is an LLVM AArch64 target."""
    return target.kind.name == "llvm" and str(target.attrs.get("mtriple", "")).startswith("aarch64")


def channel_unroll(target: Target) -> int:
    """Input channels unrolled inside the pixel loop: the NEON lanes on AArch64, else 1."""
    return vector_lanes(target) if is_aarch64(target) else 1


class StructuredConv2dNEONRule(ScheduleRule):
    """The template with NEON channel unrolling for AArch64 targets; ``None`` for others."""

    def apply(
        self, func: tirx.PrimFunc, target: Target, _tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """A schedule of ``func`` for ``target``, or ``None`` when not this op or not AArch64."""
        found = schedule_of_conv(func) if is_aarch64(target) else None
        if found is None:
            return None
        sch, conv = found
        try:
            done = schedule_structured_conv2d(
                sch, conv, target, channel_unroll=channel_unroll(target)
            )
        except SCHEDULE_FAILURES:
            return None
        return sch if done else None
