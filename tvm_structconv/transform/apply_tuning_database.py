"""Give every fused function a tuning database holds its tuned schedule, and mark it so.

A module pass over TIR, to run right after fusion and before
:class:`~tvm_structconv.transform.ApplySchedules` (which skips functions already scheduled).
It wraps ``relax.transform.MetaScheduleApplyDatabase``, which looks each PrimFunc up by
structural equality and marks those it schedules ``tirx.is_scheduled``; this pass also gives
each of them the attribute :data:`TUNED` (``"structconv.tuned"``), so what the database did
is read from the module (:func:`tuned_functions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

import tvm
from tvm import relax

if TYPE_CHECKING:
    from tvm.s_tir import meta_schedule as ms

__all__ = ["TUNED", "ApplyTuningDatabase", "tuned_functions"]

IS_SCHEDULED = "tirx.is_scheduled"
#: Function attribute of a PrimFunc scheduled from a tuning database.
TUNED = "structconv.tuned"


def _has(func: tvm.tirx.PrimFunc, attribute: str) -> bool:
    return func.attrs is not None and bool(func.attrs.get(attribute, False))


def tuned_functions(mod: tvm.IRModule) -> List[str]:
    """Names of the PrimFuncs of ``mod`` that :class:`ApplyTuningDatabase` scheduled, sorted."""
    return sorted(
        gvar.name_hint
        for gvar, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and _has(func, TUNED)
    )


@tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
class ApplyTuningDatabase:
    """Apply the best record of ``database`` to each function it holds; mark those :data:`TUNED`.

    Parameters
    ----------
    database
        A MetaSchedule database (:func:`tvm_structconv.tune.load_database`).
    """

    def __init__(self, database: ms.Database) -> None:
        self.database = database

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with the database's schedules applied."""
        before = {
            gvar.name_hint
            for gvar, func in mod.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc) and _has(func, IS_SCHEDULED)
        }
        with self.database:
            applied = relax.transform.MetaScheduleApplyDatabase()(mod)
        tuned = {
            gvar: func.with_attr(TUNED, True)
            for gvar, func in applied.functions_items()
            if isinstance(func, tvm.tirx.PrimFunc)
            and _has(func, IS_SCHEDULED)
            and gvar.name_hint not in before
        }
        if not tuned:
            return applied
        result = applied.clone()  # never update a module another pass may still hold
        for gvar, func in tuned.items():
            result.update_func(gvar, func)
        return result
