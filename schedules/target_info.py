"""What CPU schedules read off a target, and small loop helpers they share.

Vector width and register count come from the target's LLVM features, never from the machine
compiling (a build for another CPU must not inherit this one's AVX-512). ``llvm_get_vector_width``
is used only for non-x86 triples: in TVM 0.27 it answers 512 for every x86 CPU, AVX2-only
``haswell`` and SSE2 ``x86-64`` included.
"""

from __future__ import annotations

from typing import List, Optional

import tvm
from tvm import s_tir
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width, target_has_features

__all__ = [
    "divisors",
    "extent",
    "is_aarch64",
    "target_cores",
    "vector_bits",
    "vector_lanes",
    "vector_registers",
    "vector_partition",
    "vector_split",
    "vector_widths",
]


def _triple(target: Target) -> str:
    return str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()


def _has(feature: str, target: Target) -> bool:
    try:
        return bool(target_has_features(feature, target))
    except Exception:  # noqa: BLE001 - LLVM knows no features for this triple
        return False


def is_aarch64(target: Target) -> bool:
    """Whether ``target`` is an LLVM AArch64 target."""
    return target.kind.name == "llvm" and str(target.attrs.get("mtriple", "")).startswith("aarch64")


def vector_bits(target: Target) -> int:
    """Width in bits of the target's vector registers (128 when unknown)."""
    if target.kind.name != "llvm":
        return 128
    if _triple(target).startswith(("x86_64", "i386", "i686")):
        if _has("avx512f", target):
            return 512
        if _has("avx", target):
            return 256
        return 128
    bits = int(llvm_get_vector_width(target))
    return bits if bits > 0 else 128


def vector_lanes(target: Target, dtype_bits: int = 32) -> int:
    """Lanes of one vector register for elements of ``dtype_bits`` bits."""
    return max(vector_bits(target) // dtype_bits, 1)


def vector_registers(target: Target) -> int:
    """Architectural vector registers: 32 with AVX-512 and on AArch64, else 16."""
    if _triple(target).startswith("aarch64") or _has("avx512f", target):
        return 32
    return 16


def target_cores(target: Target) -> int:
    """The target's ``num-cores`` (1 when unset)."""
    return max(int(target.attrs.get("num-cores", 1) or 1), 1)


def divisors(value: int, bound: int) -> List[int]:
    """The divisors of ``value`` up to ``bound``, ascending."""
    return [d for d in range(1, min(value, bound) + 1) if value % d == 0]


def vector_widths(total: int, lanes: int, registers: int = 1) -> List[int]:
    """Vector lengths that divide ``total`` and fill registers without shuffles.

    Whole registers (multiples of ``lanes``, up to ``registers`` of them) or a power of two
    below ``lanes`` (a narrower register); LLVM splits any other length (24 lanes of AVX-512,
    40 …) into slow shuffles. ``[total]`` when nothing fits (a 3-channel tensor).
    """
    widths = [
        d
        for d in divisors(total, lanes * registers)
        if d % lanes == 0 or (d < lanes and d & (d - 1) == 0)
    ]
    return widths or [total]


def extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int:
    """The constant extent of ``loop``."""
    return int(sch.get(loop).extent)


def vector_split(
    sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int, registers: int = 1
) -> Optional[s_tir.schedule.LoopRV]:
    """Vectorize the innermost part of ``loop``; return the loop left outside it, if any.

    The vector part is the longest of :func:`vector_widths`.
    """
    total = extent(sch, loop)
    width = max(vector_widths(total, lanes, registers))
    if width == total:
        if total > 1:
            sch.vectorize(loop)
        return None
    outer, inner = sch.split(loop, [None, width])
    sch.vectorize(inner)
    return outer


def vector_partition(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int) -> None:
    """Vectorize ``loop`` in whole registers even when ``lanes`` does not divide its extent.

    :func:`vector_split` of an extent with no whole-register divisor (255, 241, 129 channels of
    a window sum's stages) falls back to a narrow vector or none; here the loop is partitioned
    into a part of whole registers, vectorized, and a scalar remainder of fewer than ``lanes``.
    A loop that ``lanes`` divides, or shorter than ``lanes``, gets :func:`vector_split`; a loop
    of symbolic extent (a stage under MetaSchedule's sampled tiles) stays as it is.
    """
    if not isinstance(sch.get(loop).extent, tvm.tirx.IntImm):
        return
    total = extent(sch, loop)
    if total <= lanes or total % lanes == 0:
        vector_split(sch, loop, lanes)
        return
    whole, _ = sch.loop_partition(loop, [total // lanes * lanes, None])
    vector_split(sch, whole, lanes)
