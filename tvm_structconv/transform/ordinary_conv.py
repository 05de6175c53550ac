"""Emit every remaining conv2d with a constant weight as the fused op with the trivial structure.

Matches, in each Relax function, ``relax.nn.conv2d(x, W)`` in one of the forms
:func:`~tvm_structconv.transform.conv_call.read_conv2d` understands (NCHW/OIHW, or NHWC with
``W`` a constant or ``permute_dims`` of one). Produces ``call_tir`` of the same TE compute the
structured rewrite emits (:func:`tvm_structconv.ops.structured_conv2d` or its NHWC form), with
``Structure(C, N, C, N, groups)``: no pool stage, so it is exactly the ordinary conv, and it
gets the same hand schedule as a structured one. Run it after
:class:`~tvm_structconv.transform.RewriteStructuredConv` in both builds so that original and
structured models are compared at equal effort. Convs with a non-constant weight or another
layout are left alone.
"""

from __future__ import annotations

from typing import List

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_structconv.structure import Structure
from tvm_structconv.transform.conv_call import (
    BlockSize,
    default_block_size,
    emit_conv2d,
    read_conv2d,
)

__all__ = ["RewriteOrdinaryConv"]

_CONV2D = is_op("relax.nn.conv2d")(wildcard(), wildcard())


@tvm.transform.module_pass(opt_level=0, name="RewriteOrdinaryConv")
class RewriteOrdinaryConv:
    """Every constant-weight conv2d as ``structured_conv2d`` with the trivial structure.

    A module without such a conv is returned unchanged.

    Parameters
    ----------
    block_size
        For NHWC convs: the output-channel block the kernel is packed with, per layer.

    Attributes
    ----------
    rewritten
        After the pass ran: the kernel shape (OIHW) of every conv it emitted, in program order.
    """

    def __init__(self, block_size: BlockSize = default_block_size) -> None:
        self.block_size = block_size
        self.rewritten: List[tuple] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of ``mod``; fill ``self.rewritten``."""
        rewriter = _OrdinaryConvMutator(mod, self.block_size)
        for global_var, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updated = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
                rewriter.builder_.update_func(global_var, updated)
        self.rewritten = rewriter.rewritten
        if not self.rewritten:
            return mod
        return relax.transform.CanonicalizeBindings()(rewriter.builder_.get())


@mutator
class _OrdinaryConvMutator(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, block_size: BlockSize) -> None:
        super().__init__(mod)
        self.block_size = block_size
        self.rewritten: List[tuple] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not _CONV2D.match(call):
            return call
        conv = read_conv2d(call, self.lookup_binding)
        if isinstance(conv, str):
            return call
        out_channels, per_group, height, width = conv.kernel.shape
        structure = Structure(per_group * conv.groups, (height, width), per_group * conv.groups,
                              (height, width), conv.groups)
        self.rewritten.append(conv.kernel.shape)
        return emit_conv2d(self.builder_, conv, conv.kernel, structure, self.block_size)
