"""Hand schedules of the fused structured conv and of the other fused functions, per target family.

Installed as ``tvm_structconv.schedules`` (see ``package_dir`` in setup.cfg). Laid out like
TVM's dlight: one module per kernel kind, grouped by target family, each a rule that answers
``None`` for a function not its kind; :func:`rules_for` gives a target's rules in the order
they are tried.

* :mod:`.base` — the shared rule base (checks the target family once, declines on failure);
* :mod:`.cpu` — :mod:`.cpu.conv`, :mod:`.cpu.winograd`, :mod:`.cpu.reduction`,
  :mod:`.cpu.injective`, :mod:`.cpu.fallback`, with :mod:`.cpu.tiling` (register tiles) and
  :mod:`.cpu.blocks`;
* :mod:`.gpu` — :mod:`.gpu.conv` (CUDA);
* :mod:`.packing` — the one owner of the conv layout and packing block per target;
* :mod:`.target_info` — vector width, registers and cores read from a target.
"""

from __future__ import annotations

from typing import List

from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from tvm_structconv.schedules.base import target_family
from tvm_structconv.schedules.cpu.conv import StructuredConv2dRule
from tvm_structconv.schedules.cpu.fallback import Fallback
from tvm_structconv.schedules.cpu.injective import Injective
from tvm_structconv.schedules.cpu.reduction import ChannelReduction
from tvm_structconv.schedules.cpu.winograd import WinogradRule
from tvm_structconv.schedules.gpu.conv import StructuredConv2dCUDA

__all__ = ["rules_for"]


def rules_for(target: Target) -> List[ScheduleRule]:
    """The project's rules for ``target``, in the order they are tried; ``[]`` for none.

    CPU: the fused conv (direct, then Winograd), one-axis reductions (pools), injective
    functions, then the fallback that schedules anything (so every function of a CPU build is
    scheduled). GPU: the fused conv only; dlight's default GPU rules schedule the rest.
    """
    family = target_family(target)
    if family == "cpu":
        return [
            StructuredConv2dRule(),
            WinogradRule(),
            ChannelReduction(),
            Injective(),
            Fallback(),
        ]
    if family == "gpu":
        return [StructuredConv2dCUDA()]
    return []
