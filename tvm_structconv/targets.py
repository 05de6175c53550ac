"""Named compilation targets, each a real TVM target built from a dict.

TVM 0.27 rejects string targets with flags, and ``mcpu=native`` silently gives generic SSE2
code; the host CPU is read with ``llvm_get_system_cpu()`` instead.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

import tvm

__all__ = ["TargetError", "known_targets", "make_target", "target_key"]

DEFAULT_CUDA_ARCH = "sm_80"


class TargetError(ValueError):
    """An unknown target name or an invalid target option."""


def _host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _x86(cuda_arch: Optional[str]) -> tvm.target.Target:
    return tvm.target.Target(
        {
            "kind": "llvm",
            "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
            "num-cores": _host_cores(),
        }
    )


def _aarch64(cuda_arch: Optional[str]) -> tvm.target.Target:
    return tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "mcpu": "generic"}
    )


def _cuda(cuda_arch: Optional[str]) -> tvm.target.Target:
    arch = cuda_arch or DEFAULT_CUDA_ARCH
    if not arch.startswith("sm_") or not arch[3:].isdigit():
        raise TargetError(f"CUDA arch must look like sm_80, got {arch!r}")
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host=_x86(None))


_TARGETS: Dict[str, Callable[[Optional[str]], tvm.target.Target]] = {
    "x86": _x86,
    "aarch64": _aarch64,
    "cuda": _cuda,
}


def known_targets() -> List[str]:
    """The target names :func:`make_target` accepts."""
    return sorted(_TARGETS)


def make_target(name: str, cuda_arch: Optional[str] = None) -> tvm.target.Target:
    """The TVM target called ``name``.

    Parameters
    ----------
    name
        ``x86`` (this host's CPU, all its cores), ``aarch64`` (NEON, for cross compilation) or
        ``cuda``.
    cuda_arch
        ``sm_XX`` for ``cuda`` (default ``sm_80``).

    Raises
    ------
    TargetError
        For an unknown name; the message lists the known ones.
    """
    try:
        factory = _TARGETS[name]
    except KeyError:
        raise TargetError(
            f"unknown target {name!r}; known targets: {', '.join(known_targets())}"
        ) from None
    return factory(cuda_arch)


def target_key(target: tvm.target.Target) -> str:
    """A folder name for what a tuning log is valid for (``x86-znver4``, ``cuda-sm_80``)."""
    kind = target.kind.name
    if kind == "cuda":
        return f"cuda-{target.attrs.get('arch', DEFAULT_CUDA_ARCH)}"
    triple = str(target.attrs.get("mtriple", ""))
    family = "aarch64" if triple.startswith("aarch64") else "x86"
    return f"{family}-{target.attrs.get('mcpu', 'generic')}"
