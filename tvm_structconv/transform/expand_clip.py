"""Write ``clip`` (ReLU6) as ``minimum(maximum(x, low), high)`` so layout planning sees through it.

``relax.transform.ConvertLayout`` has no layout rule for ``relax.clip`` in TVM 0.27: a ReLU6
between two NHWC convs is wrapped in a transpose to NCHW and back, and then no longer fuses into
the conv before it. ``maximum`` and ``minimum`` with scalar constants are elementwise ops it
knows. Matches ``relax.clip(x, low, high)`` with ``x`` a float tensor and both bounds constant
prim values; produces ``minimum(maximum(x, c_low), c_high)`` with 0-d constants in ``x``'s dtype
(the same values as TOPI's ``clip``, which is ``max(min(x, high), low)``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_structconv.transform.relax_functions import rewrite_relax_functions, typed_const

__all__ = ["ExpandClip"]

_CLIP = is_op("relax.clip")(wildcard(), wildcard(), wildcard())


@tvm.transform.module_pass(opt_level=0, name="ExpandClip")
class ExpandClip:
    """Every ``clip`` of a float16/32/64 tensor with constant bounds as ``minimum(maximum(…))``.

    A module without such a ``clip`` is returned unchanged.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of ``mod``."""
        rewriter = _ClipMutator(mod)
        return rewrite_relax_functions(mod, rewriter, lambda: rewriter.expanded)


def _bound(value: relax.Expr) -> Optional[float]:
    """The value of a constant scalar bound (a ``FloatImm`` or ``IntImm`` argument), or ``None``."""
    if isinstance(value, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):
        return float(value.value)
    return None


@mutator
class _ClipMutator(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.expanded = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not _CLIP.match(call):
            return call
        data, low, high = call.args
        dtype = str(call.ty.dtype)
        low, high = _bound(low), _bound(high)
        if low is None or high is None or dtype not in ("float16", "float32", "float64"):
            return call
        self.expanded += 1
        lower = self.builder_.emit(relax.op.maximum(data, typed_const(np.array(low, dtype))))
        return relax.op.minimum(lower, typed_const(np.array(high, dtype)))
