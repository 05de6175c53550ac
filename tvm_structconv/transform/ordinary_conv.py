"""Emit every remaining conv2d with a constant weight as the fused op with the trivial structure.

Matches, in each Relax function, ``relax.nn.conv2d(x, W)`` in one of the forms
:func:`~tvm_structconv.transform.conv_call.read_conv2d` understands (NCHW/OIHW, or NHWC with
``W`` a constant or ``permute_dims`` of one). Produces ``call_tir`` of the same TE compute the
structured rewrite emits (:func:`tvm_structconv.ops.structured_conv2d` or its NHWC form), with
``Structure(C, N, C, N, groups)``: no pool stage, so it is exactly the ordinary conv, and it
gets the same hand schedule as a structured one. Run it after
:class:`~tvm_structconv.transform.RewriteStructuredConv` in both builds so that original and
structured models are compared at equal effort. Convs with a non-constant weight, a shape
that is not static or another layout are left alone, each with its reason in the
:class:`OrdinaryConvReport` that :func:`rewrite_ordinary_conv` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_structconv.schedules.packing import BlockSize, portable_block_size
from tvm_structconv.structure import Structure
from tvm_structconv.transform.conv_call import (
    LinearCall,
    emit_conv2d,
    emit_linear,
    read_conv2d,
    read_linear,
    static_shape,
)
from tvm_structconv.transform.relax_functions import rewrite_relax_functions

__all__ = ["OrdinaryConvReport", "RewriteOrdinaryConv", "rewrite_ordinary_conv"]

_CONV2D = is_op("relax.nn.conv2d")(wildcard(), wildcard())


@dataclass
class OrdinaryConvReport:
    """What :func:`rewrite_ordinary_conv` did, in program order.

    Attributes
    ----------
    rewritten
        The kernel shape (OIHW) of every conv it emitted as the fused op.
    skipped
        ``(layer, reason)`` for every conv it left to TVM's own ``conv2d`` (and Linear layer
        left to ``matmul``); ``layer`` describes it by its weight's shape when known:
        ``"conv2d #2 (8x4x3x3)"``, ``"linear #1 (10x64)"``.
    """

    rewritten: List[Tuple[int, ...]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self) -> List[str]:
        """One line per kind and reason: how many layers were left to TVM's own op and why."""
        groups: dict = {}
        for layer, reason in self.skipped:
            kind = "linear" if layer.startswith("linear") else "conv"
            groups.setdefault((kind, reason), []).append(layer)
        op = {"conv": "conv2d", "linear": "matmul"}
        return [
            f"{len(layers)} {kind}{'s' if len(layers) > 1 else ''} left to TVM's own {op[kind]} "
            f"({reason}): {', '.join(layers[:3])}{' ...' if len(layers) > 3 else ''}"
            for (kind, reason), layers in groups.items()
        ]


def rewrite_ordinary_conv(
    mod: tvm.IRModule, block_size: BlockSize = portable_block_size, linear_as_conv: bool = False
) -> Tuple[tvm.IRModule, OrdinaryConvReport]:
    """Emit every constant-weight conv2d of ``mod`` as the fused op with the trivial structure.

    Parameters
    ----------
    mod
        The module (not modified).
    block_size
        For NHWC convs: the output-channel block the kernel is packed with, per layer.
    linear_as_conv
        Also emit every Linear layer (``matmul`` with a constant 2-D weight, static shapes) as
        the NHWC fused op with a 1×1 kernel: a packed, register-tiled GEMM with its epilogue
        fused (:func:`~tvm_structconv.transform.conv_call.emit_linear`). Its kernel shape is
        reported as ``(out, in, 1, 1)``.

    Returns
    -------
    tuple of tvm.IRModule and OrdinaryConvReport
        The rewritten module (``mod`` itself when no conv was rewritten) and what was done.
    """
    rewriter = _OrdinaryConvMutator(mod, block_size, linear_as_conv)
    rewritten = rewrite_relax_functions(mod, rewriter, lambda: len(rewriter.report.rewritten))
    return rewritten, rewriter.report


@tvm.transform.module_pass(opt_level=0, name="RewriteOrdinaryConv")
class RewriteOrdinaryConv:
    """:func:`rewrite_ordinary_conv` as a module pass (its report is dropped).

    Parameters
    ----------
    block_size
        For NHWC convs: the output-channel block the kernel is packed with, per layer.
    linear_as_conv
        Linear layers too, as 1×1 NHWC convs.
    """

    def __init__(
        self, block_size: BlockSize = portable_block_size, linear_as_conv: bool = False
    ) -> None:
        self.block_size = block_size
        self.linear_as_conv = linear_as_conv

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with every constant-weight conv2d emitted as the fused op."""
        return rewrite_ordinary_conv(mod, self.block_size, self.linear_as_conv)[0]


@mutator
class _OrdinaryConvMutator(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, block_size: BlockSize, linear_as_conv: bool) -> None:
        super().__init__(mod)
        self.block_size = block_size
        self.linear_as_conv = linear_as_conv
        self.report = OrdinaryConvReport()

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if self.linear_as_conv:
            linear = read_linear(call, self.lookup_binding)
            if isinstance(linear, LinearCall):
                return self._linear(call, linear)
        if not _CONV2D.match(call):
            return call
        conv = read_conv2d(call, self.lookup_binding)
        if isinstance(conv, str):
            self.report.skipped.append((_describe(call, len(self.report.skipped) + 1), conv))
            return call
        out_channels, per_group, height, width = conv.kernel.shape
        structure = Structure(
            per_group * conv.groups,
            (height, width),
            per_group * conv.groups,
            (height, width),
            conv.groups,
        )
        self.report.rewritten.append(conv.kernel.shape)
        return emit_conv2d(self.builder_, conv, conv.kernel, structure, self.block_size)

    def _linear(self, call: relax.Call, linear: LinearCall) -> relax.Expr:
        out_features, in_features = linear.kernel.shape
        if linear.out_shape is None or static_shape(linear.data) is None:
            number = len(self.report.skipped) + 1
            self.report.skipped.append(
                (
                    f"linear #{number} ({out_features}x{in_features})",
                    "input or output shape is not static",
                )
            )
            return call
        self.report.rewritten.append((out_features, in_features, 1, 1))
        structure = Structure(in_features, 1, in_features, 1)
        return emit_linear(self.builder_, linear, linear.kernel, structure, True, self.block_size)


def _describe(call: relax.Call, number: int) -> str:
    """``conv2d #k (OxIxHxW)`` from the weight's static shape, or ``conv2d #k``."""
    shape = getattr(call.args[1].ty, "shape", None)
    if shape is not None and all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return f"conv2d #{number} ({'x'.join(str(int(d)) for d in shape)})"
    return f"conv2d #{number}"
