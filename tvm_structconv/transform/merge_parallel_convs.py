"""Merge convolutions of one input whose outputs are summed into one convolution.

RepVGG-style blocks (timm ``repvgg``, MobileOne, ACNet, diverse-branch blocks) compute, in
their training form, ``conv3x3(x) + conv1x1(x) + bn(x)``: three kernels and two additions
over the same input, where one conv gives the same result. Convolution is linear in its
kernel, so a sum of convs of the same input with the same stride, dilation and groups is the
conv of the summed kernels, each kernel zero-padded to the largest size around its centre::

    add(add(conv2d(x, W1) + b1, conv2d(x, W2) + b2), batch_norm(x)[0])
        -> add(conv2d(x, W1 + pad(W2) + diag(s)), b1 + b2 + t)

Matched, in every Relax function, on each tree of ``add`` whose inner nodes have no other
user. Its leaves are sorted into

* **convs**: ``conv2d`` with a constant weight (``read_conv2d``: NCHW/OIHW or NHWC after
  ``ConvertLayout``), used only in this sum;
* **identities**: the input of such a conv itself, or an inference ``batch_norm`` of it with
  constant parameters on the channel axis (``x * s + t`` per channel);
* **per-channel constants**: biases (constant, or ``permute_dims`` of a constant, varying
  along the channel axis only);
* anything else, added back to the merged conv unchanged.

Convs of one input merge when their stride, dilation, groups, layout and dtypes agree and their
kernels share a centre: a ``k``-tap kernel with padding ``p`` (each side) zero-padded to ``K``
taps needs padding ``p + (K - k) / 2 · d``, the same for every conv. An identity joins as the
one-hot kernel of its channel at the tap that reads the output's own pixel (stride 1, as many
outputs as inputs). Everything is summed in float64 and cast back to the weights' dtype.

The pass runs after the structured rewrite: a conv with a recorded structure is already the
fused structured op and is never merged with an ordinary conv or an identity (adding a 1x1
branch would break its structure). Structured convs of one input that call the same fused op
(the same structure, geometry and ``alpha`` packing, so the same PrimFunc) merge with each
other: the op is linear in ``alpha`` (the Winograd op in its transformed ``alpha``), so their
sum is one call with the summed constant (MobileOne's parallel 1x1 branches, each structured,
become one structured conv).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_structconv.transform.conv_call import (
    STRUCTURED_CONV,
    WINOGRAD_CONV,
    Conv2dCall,
    bound_value,
    read_conv2d,
)
from tvm_structconv.transform.fold_batchnorm import batch_norm_affine
from tvm_structconv.transform.relax_functions import (
    count_uses,
    rewrite_relax_functions,
    typed_const,
)

__all__ = ["MergeParallelConvs", "ParallelConvReport", "merge_parallel_convs"]

_ADD = tvm.ir.Op.get("relax.add")
_CONV = tvm.ir.Op.get("relax.nn.conv2d")
_PERMUTE = tvm.ir.Op.get("relax.permute_dims")
_BATCH_NORM = tvm.ir.Op.get("relax.nn.batch_norm")
_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_SLICE = tvm.ir.Op.get("relax.strided_slice")
#: The fused structured convs: ops linear in their one constant argument.
_STRUCTURED_OPS = (STRUCTURED_CONV, WINOGRAD_CONV)


@dataclass
class ParallelConvReport:
    """What :func:`merge_parallel_convs` did.

    Attributes
    ----------
    merged
        One line per merge: the kernels that became one (``"3x3 + 1x1 + identity -> 3x3,
        48->48"``).
    """

    merged: List[str] = field(default_factory=list)

    def summary(self) -> List[str]:
        """A note for the user (empty when nothing was merged)."""
        if not self.merged:
            return []
        kinds = Counter(line.split(",")[0] for line in self.merged)
        parts = ", ".join(f"{count}x ({kind})" for kind, count in sorted(kinds.items()))
        return [f"summed parallel convs merged into one conv each: {parts}"]


def merge_parallel_convs(mod: tvm.IRModule) -> Tuple[tvm.IRModule, ParallelConvReport]:
    """Merge the summed convs of one input in every Relax function of ``mod``.

    See the module docstring for what is matched.

    Returns
    -------
    tuple of tvm.IRModule and ParallelConvReport
        The module (``mod`` itself when nothing was merged) and what was merged.
    """
    report = ParallelConvReport()
    merger = _Merger(mod, report)
    return rewrite_relax_functions(
        mod, merger, lambda: len(report.merged), merger.merge_function
    ), report


@tvm.transform.module_pass(opt_level=0, name="MergeParallelConvs")
class MergeParallelConvs:
    """:func:`merge_parallel_convs` as a module pass (its report is dropped)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with every mergeable sum of convs merged."""
        return merge_parallel_convs(mod)[0]


@dataclass
class _StructuredCall:
    """A ``call_tir`` of the fused structured conv: ``op(data, alpha)``, maybe under the
    ``strided_slice`` that cuts a padded channel block off (``slice``)."""

    call: relax.Call
    alpha: np.ndarray
    source: Tuple[relax.Expr, Optional[Tuple[int, ...]]]
    slice: Optional[relax.Call] = None

    def key(self) -> tuple:
        """Calls with equal keys compute the same op of the same input."""
        return (self.call.args[0], self.source[0], self.source[1])


@dataclass
class _Leaf:
    """One term of a sum: a conv, an identity (``x * scale + shift``), a per-channel constant
    or anything else (``expr``)."""

    expr: relax.Expr
    conv: Optional[Conv2dCall] = None
    source: Optional[Tuple[relax.Expr, Optional[Tuple[int, ...]]]] = None
    scale: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None
    structured: Optional[_StructuredCall] = None


@mutator
class _Merger(PyExprMutator):
    """Rewrites the roots of mergeable sums, one function at a time."""

    def __init__(self, mod: tvm.IRModule, report: ParallelConvReport) -> None:
        super().__init__(mod)
        self.merged = report.merged
        self.var2val: Dict[relax.Var, relax.Expr] = {}
        self.bound_to: Dict[relax.Expr, relax.Var] = {}
        self.uses: Counter = Counter()
        self.inner: set = set()

    def merge_function(self, func: relax.Function) -> relax.Function:
        """``func`` with its sums of convs merged."""
        func = relax.analysis.remove_all_unused(func)
        self.var2val = relax.analysis.get_var2val(func)
        self.bound_to = {value: var for var, value in self.var2val.items()}
        self.uses = count_uses(func)
        # an add bound to a variable whose one use is another add is inside a larger sum
        self.inner = {
            arg
            for value in self.var2val.values()
            if _is_add(value)
            for arg in value.args
            if isinstance(arg, relax.Var) and self.uses[arg] == 1 and _is_add(self.var2val.get(arg))
        }
        return self.visit_expr(func)

    def visit_call_(self, op: relax.Call) -> relax.Expr:
        if not op.op.same_as(_ADD) or self.bound_to.get(op) in self.inner:
            return super().visit_call_(op)
        merged = self._merge(self._leaves(op))
        return merged if merged is not None else super().visit_call_(op)

    # -- the sum's terms ------------------------------------------------------------------

    def _terms(self, expr: relax.Expr) -> List[relax.Expr]:
        """The terms of the sum ``expr``: through inner adds bound to single-use variables."""
        if isinstance(expr, relax.Var) and expr in self.inner:
            return [term for arg in self.var2val[expr].args for term in self._terms(arg)]
        return [expr]

    def _leaves(self, root: relax.Call) -> List[_Leaf]:
        leaves = []
        for term in (t for arg in root.args for t in self._terms(arg)):
            value = bound_value(term, self.var2val.get)
            leaf = _Leaf(term)
            if (
                isinstance(value, relax.Call)
                and value.op.same_as(_CONV)
                and isinstance(term, relax.Var)
                and self.uses[term] == 1
            ):
                conv = read_conv2d(value, self.var2val.get)
                if isinstance(conv, Conv2dCall) and conv.kernel.dtype.kind == "f":
                    leaf.conv, leaf.source = conv, _source(conv.data, self.var2val.get)
            elif self._single_use(term):
                leaf.structured = self._structured_call(value)
            leaves.append(leaf)
        return leaves

    def _structured_call(self, value: Optional[relax.Expr]) -> Optional[_StructuredCall]:
        """``value`` as a call of the fused structured conv with a constant ``alpha``."""
        cut = None
        if isinstance(value, relax.Call) and value.op.same_as(_SLICE):
            if not self._single_use(value.args[0]):
                return None
            cut, value = value, self.var2val.get(value.args[0])
        if not (
            isinstance(value, relax.Call)
            and value.op.same_as(_CALL_TIR)
            and value.args[0].name_hint.startswith(_STRUCTURED_OPS)
            and isinstance(value.args[1], relax.Tuple)
            and len(value.args[1].fields) == 2
        ):
            return None
        data, alpha = value.args[1].fields
        alpha = bound_value(alpha, self.var2val.get)
        if not isinstance(alpha, tvm.ir.Constant):
            return None
        return _StructuredCall(value, alpha.value.numpy(), _source(data, self.var2val.get), cut)

    # -- the merge ------------------------------------------------------------------------

    def _merge(self, leaves: List[_Leaf]) -> Optional[relax.Expr]:
        """The merged sum of ``leaves``, or ``None`` when nothing in it merges."""
        merged_leaves = self._merge_structured(leaves)
        merged = self._merge_convs(merged_leaves)
        if merged is not None or len(merged_leaves) == len(leaves):
            return merged
        out = self.visit_expr(merged_leaves[0].expr)
        for leaf in merged_leaves[1:]:
            out = self.builder_.emit(relax.op.add(out, self.visit_expr(leaf.expr)))
        return out

    def _merge_structured(self, leaves: List[_Leaf]) -> List[_Leaf]:
        """``leaves`` with each set of structured calls of one op and input replaced by one
        call with the summed ``alpha`` (the op is linear in it)."""
        groups: Dict[tuple, List[_Leaf]] = {}
        for leaf in leaves:
            if leaf.structured is not None:  # Relax objects hash and compare by identity
                groups.setdefault(leaf.structured.key(), []).append(leaf)
        result = [leaf for leaf in leaves if leaf.structured is None]
        for group in groups.values():
            if len(group) == 1:
                result.extend(group)
                continue
            first = group[0].structured
            alpha = sum(leaf.structured.alpha.astype(np.float64) for leaf in group)
            data = self.visit_expr(first.call.args[1].fields[0])
            args = relax.Tuple([data, typed_const(alpha.astype(first.alpha.dtype))])
            call = relax.Call(
                first.call.op, [first.call.args[0], args], first.call.attrs, first.call.ty_args
            )
            out = self.builder_.emit(call)
            if first.slice is not None:
                cut = first.slice
                out = self.builder_.emit(relax.Call(cut.op, [out], cut.attrs, cut.ty_args))
            result.append(_Leaf(out))
            shape = tuple(int(d) for d in out.ty.shape)
            self.merged.append(
                f"{len(group)} structured convs of one op -> 1 structured conv, "
                f"{'x'.join(map(str, shape))}"
            )
        return result

    def _merge_convs(self, leaves: List[_Leaf]) -> Optional[relax.Expr]:
        """The sum with its ordinary convs (and identities) of one input merged, or ``None``."""
        convs = [leaf for leaf in leaves if leaf.conv is not None]
        # the first conv with a partner (a conv of the same input and geometry, an identity)
        for first in convs:
            group = [leaf for leaf in convs if _same_geometry(first, leaf)]
            geometry = _kernel_padding(group)
            if geometry is None:
                continue
            out_shape = first.conv.out_shape
            others = [leaf for leaf in leaves if leaf not in group]
            for leaf in others:
                self._classify(leaf, first, out_shape)
            identities = [leaf for leaf in others if leaf.scale is not None]
            constants = [leaf for leaf in others if leaf.shift is not None and leaf.scale is None]
            if len(group) + len(identities) < 2:
                continue
            merged = _merged_kernel(group, identities, *geometry)
            if merged is None:
                continue
            kernel, padding = merged
            rest = [leaf for leaf in others if leaf not in identities and leaf not in constants]
            return self._emit(first.conv, kernel, padding, group, identities, constants, rest)
        return None

    def _classify(self, leaf: _Leaf, conv_leaf: _Leaf, out_shape: Tuple[int, ...]) -> None:
        """Fill ``leaf.scale/shift`` when it is an identity of ``conv_leaf``'s input or a
        per-channel constant of the output's shape."""
        leaf.scale = leaf.shift = None  # classified against another conv before, maybe
        conv = conv_leaf.conv
        axis = 1 if conv.layout == "NCHW" else 3
        channels = out_shape[axis]
        value = bound_value(leaf.expr, self.var2val.get)
        constant = _constant(value, self.var2val.get)
        if constant is not None:
            shape = constant.shape
            if constant.dtype.kind != "f" or len(shape) > len(out_shape):
                return
            if constant.size == 1:  # a scalar (torch's sum() starts from 0)
                leaf.shift = np.full(channels, float(constant.reshape(())))
            elif constant.size == channels and all(
                d == 1 for i, d in enumerate(shape) if i != len(shape) - len(out_shape) + axis
            ):
                leaf.shift = constant.astype(np.float64).reshape(channels)
            return
        identity = self._identity(leaf.expr, axis)
        if identity is not None and _same_source(identity[0], conv_leaf.source):
            if tuple(int(d) for d in leaf.expr.ty.shape) == tuple(out_shape):
                leaf.scale, leaf.shift = identity[1:]

    def _identity(self, expr: relax.Expr, axis: int) -> Optional[tuple]:
        """``(source, scale, shift)`` when ``expr`` is ``y`` or ``batch_norm(y)[0]`` (inference,
        constant parameters), directly or under ``permute_dims``, with ``axis`` the output's
        channel axis; ``source`` as :func:`_source` gives it for a conv reading ``y``."""
        value = bound_value(expr, self.var2val.get)
        axes = None
        if isinstance(value, relax.Call) and value.op.same_as(_PERMUTE):
            if value.attrs.axes is None or not self._single_use(expr):
                return None
            axes = tuple(int(a) for a in value.attrs.axes)
            expr, value = value.args[0], bound_value(value.args[0], self.var2val.get)
        channel_axis = axis if axes is None else axes[axis]  # the channel axis of y
        scale = shift = None
        if (
            isinstance(value, relax.TupleGetItem)
            and value.index == 0
            and self._single_use(expr)
            and self._single_use(value.tuple_value)
        ):
            norm = self.var2val.get(value.tuple_value)
            if not (
                isinstance(norm, relax.Call)
                and norm.op.same_as(_BATCH_NORM)
                and not norm.attrs.training
                and int(norm.attrs.axis) % 4 == channel_axis
                and all(isinstance(arg, tvm.ir.Constant) for arg in norm.args[1:])
            ):
                return None
            scale, shift = batch_norm_affine(norm)
            expr = norm.args[0]
        source = _source(expr, self.var2val.get) if axes is None else (expr, axes)
        if scale is None:
            shape = expr.ty.shape
            channels = int(shape[channel_axis]) if shape is not None else 0
            scale, shift = np.ones(channels), np.zeros(channels)
        return source, scale, shift

    def _single_use(self, expr: relax.Expr) -> bool:
        return isinstance(expr, relax.Var) and self.uses[expr] == 1

    def _emit(
        self,
        conv: Conv2dCall,
        kernel: np.ndarray,
        padding: Tuple[int, int, int, int],
        group: List[_Leaf],
        identities: List[_Leaf],
        constants: List[_Leaf],
        rest: List[_Leaf],
    ) -> relax.Expr:
        dtype = conv.kernel.dtype
        bias = sum((leaf.shift for leaf in identities + constants), np.zeros(kernel.shape[0]))
        call = self.var2val[group[0].expr]
        kernel_layout = str(call.attrs.kernel_layout)
        weight = kernel.transpose(["OIHW".index(axis) for axis in kernel_layout]).astype(dtype)
        data = self.visit_expr(conv.data)
        out = self.builder_.emit(
            relax.op.nn.conv2d(
                data,
                typed_const(weight),
                strides=list(conv.strides),
                padding=list(padding),
                dilation=list(conv.dilation),
                groups=conv.groups,
                data_layout=str(call.attrs.data_layout),
                kernel_layout=kernel_layout,
                out_layout=str(call.attrs.out_layout),
                out_dtype=conv.out_dtype,
            )
        )
        shape = [1, -1, 1, 1] if conv.layout == "NCHW" else [1, 1, 1, -1]
        if identities or constants:
            out = self.builder_.emit(
                relax.op.add(out, typed_const(bias.reshape(shape).astype(dtype)))
            )
        for leaf in rest:
            out = self.builder_.emit(relax.op.add(out, self.visit_expr(leaf.expr)))
        taps = " + ".join(
            [f"{leaf.conv.kernel.shape[2]}x{leaf.conv.kernel.shape[3]}" for leaf in group]
            + ["identity"] * len(identities)
        )
        self.merged.append(
            f"{taps} -> {kernel.shape[2]}x{kernel.shape[3]}, "
            f"{conv.kernel.shape[1] * conv.groups}->{kernel.shape[0]}"
        )
        return out


def _is_add(value: Optional[relax.Expr]) -> bool:
    return isinstance(value, relax.Call) and value.op.same_as(_ADD)


def _source(expr: relax.Expr, lookup) -> Tuple[relax.Expr, Optional[Tuple[int, ...]]]:
    """What ``expr`` reads, as ``(variable, axes)``: through ``permute_dims`` (two transposes
    of the image input read one input), else ``(expr, None)``."""
    value = bound_value(expr, lookup)
    if isinstance(value, relax.Call) and value.op.same_as(_PERMUTE):
        axes = value.attrs.axes
        return value.args[0], tuple(int(a) for a in axes) if axes is not None else ()
    return expr, None


def _same_source(a: Optional[tuple], b: Optional[tuple]) -> bool:
    return a is not None and b is not None and a[0].same_as(b[0]) and a[1] == b[1]


def _constant(value: relax.Expr, lookup) -> Optional[np.ndarray]:
    """The array of a constant or of ``permute_dims`` of a constant, else ``None``."""
    if isinstance(value, relax.Call) and value.op.same_as(_PERMUTE):
        inner = bound_value(value.args[0], lookup)
        if isinstance(inner, tvm.ir.Constant) and value.attrs.axes is not None:
            return inner.value.numpy().transpose([int(a) for a in value.attrs.axes])
        return None
    return value.value.numpy() if isinstance(value, tvm.ir.Constant) else None


def _same_geometry(a: _Leaf, b: _Leaf) -> bool:
    x, y = a.conv, b.conv
    return (
        _same_source(a.source, b.source)
        and x.layout == y.layout
        and x.strides == y.strides
        and x.dilation == y.dilation
        and x.groups == y.groups
        and x.out_shape == y.out_shape
        and x.out_dtype == y.out_dtype
        and x.kernel.dtype == y.kernel.dtype
        and x.kernel.shape[:2] == y.kernel.shape[:2]
    )


def _kernel_padding(group: List[_Leaf]) -> Optional[Tuple[Tuple[int, int], Tuple[int, ...]]]:
    """``((K_h, K_w), padding)`` of the merged conv, or ``None`` when the kernels' centres
    differ (each kernel zero-padded to the largest size must need the same padding)."""
    size = tuple(max(leaf.conv.kernel.shape[2 + i] for leaf in group) for i in range(2))
    padding = None
    for leaf in group:
        conv = leaf.conv
        grow = [size[i] - conv.kernel.shape[2 + i] for i in range(2)]
        if any(g % 2 for g in grow):
            return None
        top, left, bottom, right = conv.padding
        h, w = (g // 2 * conv.dilation[i] for i, g in enumerate(grow))
        mine = (top + h, left + w, bottom + h, right + w)
        if padding is not None and mine != padding:
            return None
        padding = mine
    return size, padding


def _merged_kernel(
    group: List[_Leaf],
    identities: List[_Leaf],
    size: Tuple[int, int],
    padding: Tuple[int, int, int, int],
) -> Optional[Tuple[np.ndarray, Tuple[int, int, int, int]]]:
    """The summed kernel (float64, OIHW) of ``size`` and its ``padding`` (from
    :func:`_kernel_padding`), or ``None`` if an identity cannot join (a stride, a channel count
    or a padding that moves the pixel)."""
    kh, kw = size
    first = group[0].conv
    out_channels, in_per_group = first.kernel.shape[:2]
    kernel = np.zeros((out_channels, in_per_group, kh, kw))
    for leaf in group:
        k = leaf.conv.kernel
        dh, dw = (kh - k.shape[2]) // 2, (kw - k.shape[3]) // 2
        kernel[:, :, dh : dh + k.shape[2], dw : dw + k.shape[3]] += k
    if identities:
        in_channels = in_per_group * first.groups
        top, left = padding[0], padding[1]
        dy, dx = first.dilation
        if (
            first.strides != (1, 1)
            or in_channels != out_channels
            or top % dy
            or left % dx
            or not (0 <= top // dy < kh and 0 <= left // dx < kw)
        ):
            return None
        per_group = out_channels // first.groups
        channels = np.arange(out_channels)
        rows = channels - (channels // per_group) * per_group
        for leaf in identities:
            kernel[channels, rows, top // dy, left // dx] += leaf.scale
    return kernel, padding
