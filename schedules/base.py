"""What every schedule rule of the package shares: the target check, and declining on failure.

A rule is a dlight :class:`~tvm.s_tir.dlight.base.ScheduleRule` for one target *family*
(:func:`target_family`: ``"cpu"`` for LLVM targets, ``"gpu"`` for CUDA). :class:`TargetRule`
checks the family and that the function is a PrimFunc once, in :meth:`TargetRule.apply`, and
turns a schedule primitive's failure into "not my kind" (``None``), so that the next rule of
:func:`tvm_structconv.schedules.rules_for` gets the function.
"""

from __future__ import annotations

from typing import Optional

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

__all__ = ["SCHEDULE_FAILURES", "TargetRule", "schedule_whole_function", "target_family"]

#: What a schedule primitive raises on a function it cannot transform: a rule then declines.
#: (``InternalError`` is TVM's failed internal check, e.g. inlining a block it cannot.)
SCHEDULE_FAILURES = (s_tir.ScheduleError, tvm.error.InternalError)

#: Target kind -> the family of rules that schedule it.
_FAMILIES = {"llvm": "cpu", "cuda": "gpu"}


def target_family(target: Target) -> Optional[str]:
    """``"cpu"`` (LLVM targets), ``"gpu"`` (CUDA) or ``None`` (no rules of this package)."""
    return _FAMILIES.get(target.kind.name)


class TargetRule(ScheduleRule):
    """A rule for the functions of one target family; subclasses write :meth:`schedule`.

    Attributes
    ----------
    family
        The :func:`target_family` this rule schedules; any other target gets ``None``.
    """

    family: str = "cpu"

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> Optional[s_tir.Schedule]:
        """A schedule of ``func`` for ``target``, or ``None`` when it is not this rule's kind.

        ``None`` too when a schedule primitive refuses the function
        (:data:`SCHEDULE_FAILURES`): the next rule then gets it.
        """
        if not isinstance(func, tirx.PrimFunc) or target_family(target) != self.family:
            return None
        try:
            return self.schedule(func, target, tunable)
        except SCHEDULE_FAILURES:
            return None

    def schedule(
        self, func: tirx.PrimFunc, target: Target, tunable: bool
    ) -> Optional[s_tir.Schedule]:
        """Schedule ``func`` (of this rule's family); ``None`` when it is not this rule's kind."""
        raise NotImplementedError


def schedule_whole_function(space: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> None:
    """Mark every block of ``space`` but ``block`` (and the root) as scheduled for MetaSchedule.

    A MetaSchedule custom rule that schedules the whole function around its block calls this,
    so that no default rule touches the other blocks, nor the root (whose parallel/vectorize
    annotation would fail ``RewriteParallelVectorizeUnroll``).
    """
    root = space.get_sblock("root")
    for other in [root, *space.get_child_blocks(root)]:
        if not space.get(other).same_as(space.get(block)):
            space.annotate(other, "schedule_rule", "None")
