"""Reading a scheduled function's loop nests in tests: the loops around a block, block names."""

from __future__ import annotations

import re
from typing import List, Tuple

import tvm
from tvm import s_tir

#: 16 float lanes, 32 registers; two cores, so that nothing depends on the machine testing.
AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})

SERIAL, PARALLEL, VECTORIZED, UNROLLED = (
    tvm.tirx.ForKind.SERIAL,
    tvm.tirx.ForKind.PARALLEL,
    tvm.tirx.ForKind.VECTORIZED,
    tvm.tirx.ForKind.UNROLLED,
)


def nest(sch: s_tir.Schedule, block: str) -> List[Tuple[tvm.tirx.ForKind, int]]:
    """The (kind, extent) of each loop around the block named ``block``, outermost first."""
    return [
        (sch.get(loop).kind, int(sch.get(loop).extent))
        for loop in sch.get_loops(sch.get_sblock(block))
    ]


def block_names(sch: s_tir.Schedule) -> List[str]:
    """The blocks of the scheduled function in program order, the root left out."""
    names = re.findall(r'T\.sblock\("(\w+)"\)', sch.mod.script())
    return [name for name in names if name != "root"]
