"""Move layout transposes down through elementwise ops until they cancel, as ONNX Runtime's
transpose optimizer does.

``relax.transform.ConvertLayout`` makes convs NHWC, but a model that permutes its activations
itself (ConvNeXt: ``x.permute(0, 2, 3, 1)`` → LayerNorm → MLP → ``permute(0, 3, 1, 2)`` →
layer scale → residual add) keeps transposes between the convs: the layer-scale multiply and
the residual add run on NCHW tensors, each wrapped in a ``permute_dims`` pair. This pass
rewrites, in every Relax function, until nothing changes:

* ``permute_dims(permute_dims(x, p), q)`` → ``permute_dims(x, p∘q)``, and an identity
  ``permute_dims(x)`` → ``x``;
* ``op(permute_dims(x, p), …)`` with ``op`` elementwise (:data:`ELEMENTWISE`), every tensor
  argument either ``permute_dims(·, p)`` of the same ``p`` used by nothing else, or a constant
  (broadcast, of at most the output's rank) → ``permute_dims(op(x, …, c'), p)`` with each
  constant transposed by ``p``'s inverse — the permutation moves after the op, where it meets
  the next one and cancels.

No transpose is ever added: one moves only when each permuted input it replaces has no other
use. The values every binding computes are unchanged up to the order of the axes, so the
function's result is exactly the same.
"""

from __future__ import annotations

from collections import Counter
from typing import List, Optional, Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_structconv.transform.conv_call import bound_value, static_shape
from tvm_structconv.transform.relax_functions import (
    count_uses,
    rewrite_relax_functions,
    typed_const,
)

__all__ = ["ELEMENTWISE", "SinkTransposes", "sink_transposes"]

#: Ops through which a transpose moves: elementwise, with numpy broadcasting.
ELEMENTWISE = frozenset(
    f"relax.{name}"
    for name in (
        "add subtract multiply divide maximum minimum power "
        "nn.relu nn.gelu nn.gelu_tanh nn.silu sigmoid tanh exp erf negative sqrt rsqrt clip"
    ).split()
)
#: Rounds of rewriting at most (each round moves every transpose by at least one op).
MAX_ROUNDS = 64


def sink_transposes(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with its transposes moved down through elementwise ops and cancelled.

    Returns ``mod`` itself when there was nothing to move.
    """
    for _ in range(MAX_ROUNDS):
        mover = _TransposeMover(mod)
        moved = rewrite_relax_functions(
            mod, mover, lambda mover=mover: mover.changes, mover.rewrite_function
        )
        if moved.same_as(mod):
            return mod
        mod = moved
    return mod


@tvm.transform.module_pass(opt_level=0, name="SinkTransposes")
class SinkTransposes:
    """:func:`sink_transposes` as a module pass."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with its transposes moved and cancelled."""
        return sink_transposes(mod)


def _axes(call: relax.Expr) -> Optional[List[int]]:
    """The axes of a ``permute_dims`` call with a static-rank input, else ``None``."""
    if not (isinstance(call, relax.Call) and call.op.same_as(tvm.ir.Op.get("relax.permute_dims"))):
        return None
    shape = static_shape(call.args[0])
    if shape is None:
        return None
    axes = call.attrs.axes
    return list(reversed(range(len(shape)))) if axes is None else [int(a) for a in axes]


def _permute_constant(constant: tvm.ir.Constant, axes: Sequence[int]) -> Optional[tvm.ir.Constant]:
    """The constant ``c'`` with ``permute(c', axes) == c`` broadcast to ``len(axes)`` dims."""
    array = constant.value.numpy()
    rank = len(axes)
    if array.ndim > rank:
        return None
    if array.ndim == 0:
        return constant
    full = array.reshape((1,) * (rank - array.ndim) + array.shape)
    return typed_const(np.ascontiguousarray(full.transpose(np.argsort(axes))))


@mutator
class _TransposeMover(PyExprMutator):
    """One round of the rewrites over a function (uses counted before the round)."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.uses: Counter = Counter()
        self.changes = 0

    def rewrite_function(self, func: relax.Function) -> relax.Function:
        self.uses = count_uses(func)
        return self.visit_expr(func)

    def _bound(self, expr: relax.Expr) -> relax.Expr:
        return bound_value(expr, self.lookup_binding)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        axes = _axes(call)
        if axes is not None:
            return self._compose(call, axes)
        if isinstance(call.op, tvm.ir.Op) and call.op.name in ELEMENTWISE:
            return self._sink(call)
        return call

    def _compose(self, call: relax.Call, axes: List[int]) -> relax.Expr:
        """``permute(permute(x, p), q)`` as one permute; an identity permute as ``x``."""
        source = call.args[0]
        inner_axes = _axes(self._bound(source))
        composed = inner_axes is not None and len(inner_axes) == len(axes)
        if composed:
            source = self._bound(source).args[0]
            axes = [inner_axes[a] for a in axes]
        if axes == list(range(len(axes))):
            self.changes += 1
            return source
        if not composed:
            return call
        self.changes += 1
        return relax.op.permute_dims(source, axes)

    def _sink(self, call: relax.Call) -> relax.Expr:
        """``op(permute(x, p), …)`` as ``permute(op(x, …), p)`` when that adds no transpose."""
        axes, shape, new_args = None, None, []
        for arg in call.args:
            if isinstance(arg, relax.Var) and isinstance(arg.ty, relax.TensorType):
                value = self._bound(arg)
                found = _axes(value)
                if found is None or self.uses[arg] != 1 or (axes is not None and found != axes):
                    return call
                source = value.args[0]
                if shape is not None and static_shape(source) != shape:
                    return call
                axes, shape = found, static_shape(source)
                new_args.append(source)
            elif isinstance(getattr(arg, "ty", None), relax.TensorType) and not isinstance(
                arg, tvm.ir.Constant
            ):
                return call  # a tensor that is neither a variable nor a constant
            else:
                new_args.append(arg)  # constants (transposed below) and prim values (clip's)
        out_shape = static_shape(call)
        if axes is None or out_shape is None or len(out_shape) != len(axes):
            return call
        for index, arg in enumerate(new_args):
            if isinstance(arg, tvm.ir.Constant):
                new_args[index] = _permute_constant(arg, axes)
                if new_args[index] is None:
                    return call
        inner = self.builder_.emit(relax.Call(call.op, new_args, call.attrs, call.ty_args))
        self.changes += 1
        return relax.op.permute_dims(inner, axes)
