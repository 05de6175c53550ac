"""Compilation targets: named ones, their aliases, a CPU name, or a TVM target dict.

Every target is a real TVM target built from a dict: TVM 0.27 rejects string targets with
flags (``"llvm -mcpu=cortex-a76"``), and ``mcpu=native`` silently gives generic SSE2 code, so
the host CPU is read with ``llvm_get_system_cpu()`` instead. :func:`make_target` accepts

* a name: ``x86`` (this host's CPU, all its cores), ``aarch64`` (generic NEON), ``cuda``, or an
  alias (``x86_64``, ``host``; ``arm64``);
* a CPU on top of a name (``mcpu="cortex-a76"``, ``mcpu="skylake-avx512"``) and extra LLVM
  features (``mattr="+dotprod"``), checked against LLVM's list of CPUs for the triple;
* a JSON target dict (``'{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu":
  "cortex-a72"}'``) or a TVM target string with flags (``"llvm -mtriple=… -mcpu=…"``), turned
  into the dict TVM 0.27 accepts.

Tuning logs key on the resulting CPU (:func:`target_key`: ``aarch64-cortex-a76``).
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Union

import tvm
from tvm.target import codegen

__all__ = ["ALIASES", "TargetError", "known_targets", "make_target", "target_key"]

DEFAULT_CUDA_ARCH = "sm_80"
AARCH64_TRIPLE = "aarch64-linux-gnu"
X86_TRIPLE = "x86_64-linux-gnu"

#: Other spellings of the named targets.
ALIASES: Dict[str, str] = {"x86_64": "x86", "host": "x86", "arm64": "aarch64"}


class TargetError(ValueError):
    """An unknown target name or an invalid target option."""


def _host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _x86(cuda_arch: Optional[str]) -> Dict[str, object]:
    return {
        "kind": "llvm",
        "mcpu": codegen.llvm_get_system_cpu(),
        "num-cores": _host_cores(),
    }


def _aarch64(cuda_arch: Optional[str]) -> Dict[str, object]:
    return {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mattr": ["+neon"], "mcpu": "generic"}


def _cuda(cuda_arch: Optional[str]) -> Dict[str, object]:
    arch = cuda_arch or DEFAULT_CUDA_ARCH
    if not arch.startswith("sm_") or not arch[3:].isdigit():
        raise TargetError(f"CUDA arch must look like sm_80, got {arch!r}")
    return {"kind": "cuda", "arch": arch}


_TARGETS: Dict[str, Callable[[Optional[str]], Dict[str, object]]] = {
    "x86": _x86,
    "aarch64": _aarch64,
    "cuda": _cuda,
}


def known_targets() -> List[str]:
    """The target names :func:`make_target` accepts (aliases in :data:`ALIASES`)."""
    return sorted(_TARGETS)


def make_target(
    name: str,
    cuda_arch: Optional[str] = None,
    mcpu: Optional[str] = None,
    mattr: Union[None, str, Sequence[str]] = None,
) -> tvm.target.Target:
    """The TVM target ``name`` names, for the CPU ``mcpu`` when given.

    Parameters
    ----------
    name
        ``x86`` (this host's CPU, all its cores), ``aarch64`` (NEON, for cross compilation),
        ``cuda``, an alias of one (:data:`ALIASES`), a JSON target dict, or a TVM target
        string with flags (``"llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a76"``).
    cuda_arch
        ``sm_XX`` for ``cuda`` (default ``sm_80``).
    mcpu
        An LLVM CPU name for a CPU target (``cortex-a76``, ``skylake-avx512``): code for that
        CPU instead of this host's (``x86``) or generic NEON (``aarch64``).
    mattr
        Extra LLVM features (``"+dotprod,+fullfp16"`` or a list), added to the target's.

    Raises
    ------
    TargetError
        For an unknown name (the message lists the known ones), an unknown CPU for the
        target's architecture, a CPU option on a CUDA target, or an invalid target dict.
    """
    attrs = _target_dict(name, cuda_arch)
    if attrs.get("kind") == "cuda":
        if mcpu or mattr:
            raise TargetError("--mcpu and --mattr are for CPU targets, not cuda")
        return tvm.target.Target(attrs, host=tvm.target.Target(_x86(None)))
    if mcpu:
        triple = str(attrs.get("mtriple") or X86_TRIPLE)
        if not codegen.llvm_is_valid_cpu(mcpu, triple):
            known = codegen.llvm_get_cpu_archlist(
                tvm.target.Target({"kind": "llvm", "mtriple": triple})
            )
            close = difflib.get_close_matches(mcpu, sorted(str(cpu) for cpu in known), n=4)
            raise TargetError(
                f"unknown CPU {mcpu!r} for {triple.split('-')[0]}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
                + f" (all names: `llc -mtriple={triple} -mcpu=help`)"
            )
        attrs["mcpu"] = mcpu
    if mattr:
        extra = mattr.split(",") if isinstance(mattr, str) else list(mattr)
        attrs["mattr"] = [*attrs.get("mattr", []), *(f.strip() for f in extra if f.strip())]
    try:
        return tvm.target.Target(attrs)
    except Exception as error:  # TVM's own checks of the dict's keys and values
        raise TargetError(f"invalid target {name!r}: {str(error).splitlines()[-1]}") from None


def _target_dict(name: str, cuda_arch: Optional[str]) -> Dict[str, object]:
    """The attribute dict of a named target, a JSON dict, or a flagged target string."""
    text = name.strip()
    if text.startswith("{"):
        try:
            attrs = json.loads(text)
        except json.JSONDecodeError as error:
            raise TargetError(f"--target is not valid JSON: {error}") from None
        if not isinstance(attrs, dict) or "kind" not in attrs:
            raise TargetError('a JSON target must be a dict with a "kind", e.g. {"kind": "llvm"}')
        return attrs
    if " " in text:
        return _from_flags(text)
    factory = _TARGETS.get(ALIASES.get(text, text))
    if factory is None:
        raise TargetError(
            f"unknown target {name!r}; known targets: {', '.join(known_targets())} "
            f"(aliases {', '.join(sorted(ALIASES))}), a JSON dict, or 'llvm -mcpu=…'"
        )
    return factory(cuda_arch)


def _from_flags(text: str) -> Dict[str, object]:
    """``"llvm -mtriple=t -mcpu=c -mattr=+a,+b"`` as ``{"kind": "llvm", "mtriple": "t", …}``."""
    kind, *flags = text.split()
    attrs: Dict[str, object] = {"kind": kind}
    for flag in flags:
        key, equals, value = flag.lstrip("-").partition("=")
        if not flag.startswith("-") or not equals:
            raise TargetError(
                f"cannot read {flag!r} in target {text!r}: flags look like -key=value"
            )
        attrs[key] = value.split(",") if key == "mattr" else value
    return attrs


def target_key(target: tvm.target.Target) -> str:
    """A folder name for what a tuning log is valid for (``x86-znver4``, ``cuda-sm_80``)."""
    kind = target.kind.name
    if kind == "cuda":
        return f"cuda-{target.attrs.get('arch', DEFAULT_CUDA_ARCH)}"
    triple = str(target.attrs.get("mtriple", ""))
    family = "aarch64" if triple.startswith("aarch64") else "x86"
    return f"{family}-{target.attrs.get('mcpu', 'generic')}"
