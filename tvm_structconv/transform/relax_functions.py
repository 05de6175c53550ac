"""The driver loop every Relax-rewriting pass of the project shares, and its constants.

A pass here is a ``PyExprMutator`` that counts what it changed; :func:`rewrite_relax_functions`
visits every Relax function of a module with it, puts back each function the visit changed
(with its dead bindings removed) and canonicalizes the bindings once at the end. A module in
which nothing changed is returned as it is, so a pass that finds nothing to do is a no-op.
Every constant the project puts into a module is made by :func:`typed_const`, in the dtype of
its values.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Optional

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, visitor

__all__ = ["count_uses", "rewrite_relax_functions", "typed_const"]


def typed_const(values: np.ndarray) -> tvm.ir.Constant:
    """A Relax constant holding ``values`` in their own dtype.

    ``relax.const(values)`` without a dtype makes float64 values float32 and int64 values
    int32; a float64 model would silently compute in float32 from then on.
    """
    values = np.asarray(values)
    return relax.const(values, str(values.dtype))


@visitor
class _UseCounter(PyExprVisitor):
    def __init__(self) -> None:
        self.uses: Counter = Counter()

    def visit_var_(self, op: relax.Var) -> None:
        self.uses[op] += 1

    def visit_dataflow_var_(self, op: relax.DataflowVar) -> None:
        self.uses[op] += 1


def count_uses(func: relax.Function) -> Counter:
    """How often each variable of ``func`` is used (its definition is not a use)."""
    counter = _UseCounter()
    counter.visit_expr(func)
    return counter.uses


def rewrite_relax_functions(
    mod: tvm.IRModule,
    mutator: PyExprMutator,
    changes: Callable[[], int],
    visit: Optional[Callable[[relax.Function], relax.Function]] = None,
) -> tvm.IRModule:
    """Visit every Relax function of ``mod`` with ``mutator``; the module with the changes.

    Parameters
    ----------
    mod
        The module; it is not modified.
    mutator
        A mutator built on ``mod`` (``PyExprMutator(mod)``): changed functions go into its
        builder's module.
    changes
        How many changes the mutator has made so far (a counter it keeps); a function whose
        visit raised it is replaced.
    visit
        How to visit one function (default: ``mutator.visit_expr``).

    Returns
    -------
    tvm.IRModule
        ``mod`` itself if nothing changed; else the builder's module, every changed function
        without unused bindings, after ``relax.transform.CanonicalizeBindings``.
    """
    visit = visit or mutator.visit_expr
    changed = False
    for global_var, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        before = changes()
        updated = visit(func)
        if changes() > before:
            mutator.builder_.update_func(global_var, relax.analysis.remove_all_unused(updated))
            changed = True
    if not changed:
        return mod
    return relax.transform.CanonicalizeBindings()(mutator.builder_.get())
