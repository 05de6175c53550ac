"""Give every fused function a tuning database holds its tuned schedule, and say which.

A module pass over TIR, to run right after fusion and before
:class:`~tvm_structconv.transform.ApplySchedules` (which skips functions already scheduled).
It wraps ``relax.transform.MetaScheduleApplyDatabase``, which looks each PrimFunc up by
structural equality and marks those it schedules ``tirx.is_scheduled``; this pass records
their names in :attr:`ApplyTuningDatabase.applied`, so the compiler can report what the
database did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

import tvm
from tvm import relax

if TYPE_CHECKING:
    from tvm.s_tir import meta_schedule as ms

__all__ = ["ApplyTuningDatabase"]

IS_SCHEDULED = "tirx.is_scheduled"


def _scheduled(mod: tvm.IRModule) -> set:
    return {gvar.name_hint for gvar, func in mod.functions.items()
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
            and bool(func.attrs.get(IS_SCHEDULED, False))}


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
class ApplyTuningDatabase:
    """Apply the best record of ``database`` to each function it holds.

    Parameters
    ----------
    database
        A MetaSchedule database (:func:`tvm_structconv.tune.load_database`).

    Attributes
    ----------
    applied
        Names of the functions that got a tuned schedule in the last run, sorted.
    """

    def __init__(self, database: "ms.Database") -> None:
        self.database = database
        self.applied: List[str] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with the database's schedules applied."""
        before = _scheduled(mod)
        with self.database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        self.applied = sorted(_scheduled(mod) - before)
        return mod
