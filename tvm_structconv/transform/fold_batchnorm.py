"""Fold inference BatchNorm into the constant-weight conv2d before it.

Matches, in every Relax function, the first output of an inference batch norm whose input is
a conv2d with a constant weight, directly or through a constant per-channel bias add::

    y = batch_norm(conv2d(x, W), gamma, beta, mean, var)[0]
    y = batch_norm(add(conv2d(x, W), b), gamma, beta, mean, var)[0]      # also add(b, conv)

``b`` is a constant of shape ``(1, Cout, 1, 1)`` or ``(Cout, 1, 1)``, or ``reshape`` of a
constant to one of them (what ``from_exported_program`` and ``from_onnx`` make of a conv's
bias). Produces::

    y = add(conv2d(x, W * s[:, None, None, None]), (b - mean) * s + beta)

with ``s = gamma / sqrt(var + epsilon)``, the new bias a constant of shape ``(1, Cout, 1, 1)``,
``gamma`` left out when the batch norm has ``scale=False`` and ``beta`` when it has
``center=False``; folded in float64, then cast to the weight's dtype. A chain is folded only
when the conv is NCHW/OIHW/NCHW with a float weight, the batch norm has ``training=False``,
``axis=1`` and constant parameters, and every intermediate value (conv output, add output,
batch-norm tuple) has no user outside the chain, so no value anything else reads changes and
nothing is computed twice. Everything else is left as it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_const, is_op, is_tuple_get_item, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_structconv.transform.relax_functions import (
    count_uses,
    rewrite_relax_functions,
    typed_const,
)

__all__ = ["BatchNormFoldReport", "FoldBatchNorm", "batch_norm_affine", "fold_batchnorm"]

_WEIGHT = is_const()
_CONV = is_op("relax.nn.conv2d")(wildcard(), _WEIGHT)
_BIAS = is_const() | is_op("relax.reshape")(is_const(), wildcard())
_ADD = is_op("relax.add")(_CONV, _BIAS) | is_op("relax.add")(_BIAS, _CONV)
_BATCH_NORM = is_op("relax.nn.batch_norm")(_ADD | _CONV, *(is_const() for _ in range(4)))
_PATTERN = is_tuple_get_item(_BATCH_NORM, 0)


@dataclass
class BatchNormFoldReport:
    """What :func:`fold_batchnorm` did.

    Attributes
    ----------
    folded
        For each folded conv, in program order, its weight's name, or
        ``"conv2d #k (Cout x C x kh x kw)"`` for an unnamed weight.
    weight_names
        The ``names`` given, plus each folded weight constant under the name of the weight it
        replaces, so later passes (the structured-conv rewrite) still know which layer's weight
        it is.
    """

    folded: list[str] = field(default_factory=list)
    weight_names: dict[tvm.ir.Constant, str] = field(default_factory=dict)


def fold_batchnorm(
    mod: tvm.IRModule, names: Mapping[tvm.ir.Constant, str] | None = None
) -> tuple[tvm.IRModule, BatchNormFoldReport]:
    """Fold every inference BatchNorm after a constant-weight conv2d of ``mod`` into the conv.

    See the module docstring for what is matched and produced.

    Parameters
    ----------
    mod
        The module (not modified).
    names
        ``{weight constant: weight name}`` (Relax constants hash by identity), e.g. the
        frontend's ``weight_names``; not modified.

    Returns
    -------
    tuple of tvm.IRModule and BatchNormFoldReport
        The module (``mod`` itself when nothing was folded; else each changed function ends
        with dead-code removal and ``CanonicalizeBindings``) and what was folded.
    """
    report = BatchNormFoldReport(weight_names=dict(names or {}))
    folder = _BatchNormFolder(mod, report)
    return rewrite_relax_functions(
        mod, folder, lambda: len(report.folded), folder.fold_function
    ), report


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """:func:`fold_batchnorm` as a module pass (its report is dropped)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with every foldable BatchNorm folded into its conv."""
        return fold_batchnorm(mod)[0]


@mutator
class _BatchNormFolder(PyExprMutator):
    """Rewrites the matched chains of one function at a time into the builder's module."""

    def __init__(self, mod: tvm.IRModule, report: BatchNormFoldReport) -> None:
        super().__init__(mod)
        self.names = report.weight_names
        self.folded = report.folded
        self.var2val: dict[relax.Var, relax.Expr] = {}
        self.bound_to: dict[relax.Expr, relax.Var] = {}
        self.uses: Counter[relax.Var] = Counter()

    def fold_function(self, func: relax.Function) -> relax.Function:
        """``func`` with its chains folded."""
        # dead bindings such as the unused batch_norm(...)[1] of the ONNX importer are no users
        func = relax.analysis.remove_all_unused(func)
        self.var2val = relax.analysis.get_var2val(func)
        self.bound_to = {value: var for var, value in self.var2val.items()}
        self.uses = count_uses(func)
        return self.visit_expr(func)

    def visit_tuple_getitem_(self, op: relax.TupleGetItem) -> relax.Expr:
        matches = _PATTERN.extract_matched_expr(op, self.var2val)
        folded = self._fold(matches) if matches is not None else None
        return folded if folded is not None else super().visit_tuple_getitem_(op)

    def _fold(self, matches: Mapping[DFPattern, relax.Expr]) -> relax.Expr | None:
        """``add(conv2d(x, W'), b')`` for a matched chain, or ``None`` if it must stay."""
        conv, weight, batch_norm = matches[_CONV], matches[_WEIGHT], matches[_BATCH_NORM]
        add = matches[_ADD] if _ADD in matches else None
        if not (self._used_once(conv, add, batch_norm) and _foldable(conv, batch_norm)):
            return None
        kernel = weight.value.numpy()
        channels = kernel.shape[0]
        bias = np.zeros(channels) if add is None else _channel_bias(matches[_BIAS], channels)
        if bias is None:
            return None
        new_weight, new_bias = _folded_constants(kernel, bias, batch_norm)
        if weight in self.names:
            self.names[new_weight] = self.names[weight]
        shape = "x".join(map(str, kernel.shape))
        self.folded.append(self.names.get(weight, f"conv2d #{len(self.folded) + 1} ({shape})"))
        data = self.visit_expr(conv.args[0])
        return relax.op.add(relax.Call(conv.op, [data, new_weight], conv.attrs), new_bias)

    def _used_once(self, *calls: relax.Call | None) -> bool:
        """Whether the variable each call is bound to has one use: the next call of the chain."""
        return all(self.uses[self.bound_to.get(call)] == 1 for call in calls if call is not None)


def _foldable(conv: relax.Call, batch_norm: relax.Call) -> bool:
    """Whether the layouts, dtypes and batch-norm attributes allow the fold."""
    layouts = (conv.attrs.data_layout, conv.attrs.kernel_layout, conv.attrs.out_layout)
    dtype = str(conv.args[1].ty.dtype)
    return (
        layouts == ("NCHW", "OIHW", "NCHW")
        and dtype in ("float16", "float32", "float64")
        and str(conv.ty.dtype) == dtype
        and not batch_norm.attrs.training
        and int(batch_norm.attrs.axis) % 4 == 1
    )


def _channel_bias(bias: relax.Expr, channels: int) -> np.ndarray | None:
    """The values of a constant (or reshaped constant) bias of shape ``(1, C, 1, 1)`` or
    ``(C, 1, 1)`` with ``C = channels``, or ``None`` for any other bias."""
    shape = bias.ty.shape
    dims = (
        None
        if shape is None
        else [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in shape.values]
    )
    if dims not in ([1, channels, 1, 1], [channels, 1, 1]):
        return None
    constant = bias if isinstance(bias, tvm.ir.Constant) else bias.args[0]
    return constant.value.numpy().astype(np.float64).reshape(channels)


def batch_norm_affine(batch_norm: relax.Call) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` in float64 with ``batch_norm(x)[0] = x * s + t`` per channel for an inference
    batch norm with constant parameters: ``s = gamma / sqrt(var + eps)``,
    ``t = beta - mean * s`` (``gamma`` left out for ``scale=False``, ``beta`` for
    ``center=False``)."""
    attrs = batch_norm.attrs
    gamma, beta, mean, var = (arg.value.numpy().astype(np.float64) for arg in batch_norm.args[1:])
    scale = (gamma if attrs.scale else 1.0) / np.sqrt(var + float(attrs.epsilon))
    return scale, (beta if attrs.center else 0.0) - mean * scale


def _folded_constants(
    kernel: np.ndarray, bias: np.ndarray, batch_norm: relax.Call
) -> tuple[tvm.ir.Constant, tvm.ir.Constant]:
    """``W * s`` and ``(b - mean) * s + beta`` (shape ``(1, C, 1, 1)``) with
    ``s = gamma / sqrt(var + eps)``, computed in float64 and cast to the kernel's dtype."""
    scale, shift = batch_norm_affine(batch_norm)
    shift = shift + bias * scale
    weight = kernel.astype(np.float64) * scale[:, None, None, None]
    return (
        typed_const(weight.astype(kernel.dtype)),
        typed_const(shift.reshape(1, -1, 1, 1).astype(kernel.dtype)),
    )
