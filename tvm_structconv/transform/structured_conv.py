"""Rewrite every conv2d / linear with a recorded structure into sum-pool + reduced op.

Matches, in each Relax function:

* ``relax.nn.conv2d(x, W)`` with ``W`` a constant, NCHW data and OIHW kernel, or NHWC data
  and output with any kernel layout and ``W`` a constant or ``permute_dims`` of one (what
  ``relax.transform.ConvertLayout`` leaves; see :mod:`~tvm_structconv.transform.conv_call`);
* ``relax.matmul(x, relax.permute_dims(W, [1, 0]))`` with ``W`` a 2-D constant (a Linear layer
  as both the torch and the ONNX frontends import it), or ``relax.matmul(x, Wᵀ)`` with the
  transposed weight a 2-D constant (torch's dynamo ONNX exporter stores it so, renamed); see
  :func:`~tvm_structconv.transform.conv_call.read_linear`.

For a layer whose weight has a recorded structure it checks the residual, decomposes
``alpha = A⁺W`` and replaces the call with ``call_tir`` of the TE compute
:func:`tvm_structconv.ops.structured_conv2d` (``structured_conv2d_nhwc`` with ``alpha`` packed
for an NHWC conv; for a linear layer the NHWC op with a 1×1 kernel when ``linear_as_conv``,
else ``structured_dense``; an NHWC stride-1 3×3 conv with ``c = C``, ``n = 2`` as
:func:`tvm_structconv.winograd.winograd_structured_conv2d_nhwc` where the target's
``winograd_tile`` chooses it). Every other conv or
linear layer is left as it is and reported with the reason. A weight that does not satisfy
its recorded structure raises :class:`StructureMismatchError`: never wrong code, never a
silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.dpl import is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_structconv.manifest import Manifest, ManifestError, detect
from tvm_structconv.schedules.packing import BlockSize, WinogradTile, portable_block_size
from tvm_structconv.structure import Structure, default_tolerance
from tvm_structconv.transform.conv_call import (
    LinearCall,
    bound_value,
    emit_conv2d,
    emit_linear,
    emit_winograd_conv2d,
    read_conv2d,
    read_linear,
    static_shape,
    winograd_output,
)
from tvm_structconv.transform.relax_functions import rewrite_relax_functions

__all__ = [
    "LayerReport",
    "RewriteReport",
    "RewriteStructuredConv",
    "StructureMismatchError",
    "rewrite_structured_conv",
]

CONV2D = is_op("relax.nn.conv2d")(wildcard(), wildcard())


class StructureMismatchError(ValueError):
    """A layer's weights do not satisfy the structure recorded for it."""


# Errors raised inside a pass cross TVM's FFI; registered, they come out with their own type.
tvm_ffi.register_error(StructureMismatchError)
tvm_ffi.register_error(ManifestError)


@dataclass(frozen=True)
class LayerReport:
    """What the pass did with one conv or linear layer.

    Attributes
    ----------
    name
        The weight's name in the model (``layer1.0.conv1.weight``), or a description of an
        unnamed weight (``conv2d #3 (64x64x3x3)``).
    kind
        ``"conv2d"`` or ``"linear"``.
    rewritten
        Whether it now runs as sum-pool + reduced op.
    reason
        Why it was skipped, or how its structure was found (``"manifest"`` or
        ``"matched by value"``).
    structure
        The structure used (or recorded), if any.
    residual
        The weight's residual under ``structure``.
    macs_before, macs_after
        MACs of the layer before and after the rewrite (equal when skipped).
    params_before, params_after
        Weight parameters (``W`` and ``alpha``; equal when skipped).
    kernel
        Which kernel a rewritten conv runs as when the rewrite chooses between kernels
        (``winograd_tile`` given): ``"direct"`` or ``"winograd F(m,2)"``; else ``None``.
    """

    name: str
    kind: str
    rewritten: bool
    reason: str
    structure: Optional[Structure] = None
    residual: Optional[float] = None
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    kernel: Optional[str] = None


@dataclass
class RewriteReport:
    """Per-layer outcome of :class:`RewriteStructuredConv`, in program order."""

    layers: List[LayerReport] = field(default_factory=list)
    unmatched: List[str] = field(default_factory=list)

    @property
    def rewritten(self) -> List[LayerReport]:
        """The layers that were rewritten."""
        return [layer for layer in self.layers if layer.rewritten]

    @property
    def skipped(self) -> List[LayerReport]:
        """The layers that were left alone."""
        return [layer for layer in self.layers if not layer.rewritten]

    @property
    def macs_before(self) -> int:
        """Total MACs of all reported layers before the rewrite."""
        return sum(layer.macs_before for layer in self.layers)

    @property
    def macs_after(self) -> int:
        """Total MACs of all reported layers after the rewrite."""
        return sum(layer.macs_after for layer in self.layers)

    @property
    def params_before(self) -> int:
        """Total weight parameters of all reported layers before the rewrite."""
        return sum(layer.params_before for layer in self.layers)

    @property
    def params_after(self) -> int:
        """Total weight parameters of all reported layers after the rewrite."""
        return sum(layer.params_after for layer in self.layers)

    def format(self) -> str:
        """A human-readable table: one line per layer, then the totals."""
        lines = [
            f"{'layer':<40} {'kind':<7} {'C/N -> c/n':<26} {'MACs before':>13} "
            f"{'MACs after':>13}  status"
        ]
        for layer in self.layers:
            if layer.structure is not None:
                s = layer.structure
                change = (
                    f"{s.in_channels}/{s.kernel_size[0]}x{s.kernel_size[1]} -> "
                    f"{s.reduced_channels}/{s.reduced_kernel_size[0]}x"
                    f"{s.reduced_kernel_size[1]}"
                )
            else:
                change = "-"
            status = (
                f"rewritten ({layer.reason})" if layer.rewritten else f"skipped: {layer.reason}"
            )
            if layer.kernel is not None:
                status += f", {layer.kernel}"
            lines.append(
                f"{layer.name:<40} {layer.kind:<7} {change:<26} "
                f"{layer.macs_before:>13,} {layer.macs_after:>13,}  {status}"
            )
        for name in self.unmatched:
            lines.append(f"{name:<40} manifest entry matched no weight of the model")
        ratio = self.macs_before / self.macs_after if self.macs_after else float("nan")
        lines.append(
            f"{len(self.rewritten)} of {len(self.layers)} layers rewritten; "
            f"conv/linear MACs {self.macs_before:,} -> {self.macs_after:,} ({ratio:.2f}x)"
        )
        return "\n".join(lines)


def rewrite_structured_conv(
    mod: tvm.IRModule,
    manifest: Manifest,
    weight_names: Optional[Mapping[tvm.ir.Constant, str]] = None,
    tol: Optional[float] = None,
    match_by_value: bool = False,
    block_size: BlockSize = portable_block_size,
    linear_as_conv: bool = False,
    winograd_tile: Optional[WinogradTile] = None,
) -> Tuple[tvm.IRModule, RewriteReport]:
    """Rewrite every conv / linear layer of ``mod`` that has a structure; say what was done.

    Parameters
    ----------
    mod
        The module (not modified).
    manifest
        Recorded structures keyed by weight name.
    weight_names
        ``{weight constant: weight name}``, as the frontend and the BatchNorm fold leave it
        (Relax constants hash by identity).
    tol
        Largest accepted relative residual; ``None`` picks :func:`default_tolerance` of each
        weight's dtype.
    match_by_value
        Also look for a structure (:func:`~tvm_structconv.manifest.detect`) in weights that the
        manifest does not name, e.g. because an exporter renamed them.
    block_size
        For NHWC convs: the output-channel block ``alpha`` is packed with, per layer
        (:data:`~tvm_structconv.transform.conv_call.BlockSize`; the target's schedule decides).
    linear_as_conv
        Emit structured Linear layers as the NHWC fused op with a 1×1 kernel (what the CPU
        schedules tile; needs static shapes) instead of ``structured_dense``.
    winograd_tile
        For an NHWC conv Winograd can compute
        (:func:`~tvm_structconv.transform.conv_call.winograd_output`): ``m`` of F(m, 2) for
        its output, or ``None`` for the direct kernel
        (:data:`~tvm_structconv.schedules.packing.WinogradTile`, the target's choice). Each
        rewritten conv's report then names its kernel. ``None``: always the direct kernel.

    Returns
    -------
    tuple of tvm.IRModule and RewriteReport
        The rewritten module (``mod`` itself when nothing was rewritten) and one
        :class:`LayerReport` per conv / linear layer met, plus the manifest entries no weight
        matched.

    Raises
    ------
    StructureMismatchError
        If a layer's weights do not satisfy the structure recorded (or detected) for it.
    ManifestError
        If a manifest entry does not fit its weight's shape.
    """
    options = _Options(
        manifest,
        weight_names or {},
        tol,
        match_by_value,
        block_size,
        linear_as_conv,
        winograd_tile,
    )
    return _rewrite(mod, options)


@dataclass(frozen=True)
class _Options:
    """The arguments of :func:`rewrite_structured_conv` after ``mod``."""

    manifest: Manifest
    weight_names: Mapping[tvm.ir.Constant, str]
    tol: Optional[float]
    match_by_value: bool
    block_size: BlockSize
    linear_as_conv: bool
    winograd_tile: Optional[WinogradTile] = None


def _rewrite(mod: tvm.IRModule, options: _Options) -> Tuple[tvm.IRModule, RewriteReport]:
    rewriter = _StructuredConvMutator(mod, options)
    rewritten = rewrite_relax_functions(mod, rewriter, lambda: len(rewriter.report.rewritten))
    seen = {layer.name for layer in rewriter.report.layers}
    rewriter.report.unmatched = sorted(set(options.manifest.layers) - seen)
    return rewritten, rewriter.report


@tvm.transform.module_pass(opt_level=0, name="RewriteStructuredConv")
class RewriteStructuredConv:
    """:func:`rewrite_structured_conv` as a module pass (its report is dropped).

    Use the function where the report matters (it is how skipped layers are told); the pass
    is for a ``tvm.transform.Sequential``. The parameters are the function's.
    """

    def __init__(
        self,
        manifest: Manifest,
        weight_names: Optional[Mapping[tvm.ir.Constant, str]] = None,
        tol: Optional[float] = None,
        match_by_value: bool = False,
        block_size: BlockSize = portable_block_size,
        linear_as_conv: bool = False,
        winograd_tile: Optional[WinogradTile] = None,
    ) -> None:
        self.options = _Options(
            manifest,
            weight_names or {},
            tol,
            match_by_value,
            block_size,
            linear_as_conv,
            winograd_tile,
        )

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """``mod`` with every structured layer rewritten."""
        return _rewrite(mod, self.options)[0]


@mutator
class _StructuredConvMutator(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, options: _Options) -> None:
        super().__init__(mod)
        self.options = options
        self.report = RewriteReport()
        self.unnamed = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if CONV2D.match(call):
            return self._conv2d(call)
        linear = read_linear(call, self.lookup_binding)
        if isinstance(linear, str):  # a constant, maybe under permute_dims, but not a layer's
            weight = bound_value(call.args[1], self.lookup_binding)
            if isinstance(weight, relax.Call):
                weight = bound_value(weight.args[0], self.lookup_binding)
            self._skip("linear", self._unsupported_name(weight, "matmul"), linear)
            return call
        if linear is not None:
            return self._linear(call, linear)
        return call

    # ------------------------------------------------------------------ layers
    def _conv2d(self, call: relax.Call) -> relax.Expr:
        conv = read_conv2d(call, self.lookup_binding)
        if isinstance(conv, str):
            self._skip("conv2d", self._unsupported_name(call.args[1], "conv2d"), conv)
            return call
        kernel = conv.kernel
        name = self._name(conv.constant, "conv2d", kernel.shape)
        structure, reason = self._structure(name, kernel, conv.groups)
        if structure is None:
            self._skip("conv2d", name, reason, conv.macs, kernel.size)
            return call
        alpha, residual = self._checked_alpha(name, kernel, structure)
        tile = self._winograd_tile(conv, structure)
        self._record(
            "conv2d",
            name,
            reason,
            structure,
            residual,
            conv.macs,
            alpha.size * conv.pixels,
            kernel.size,
            alpha.size,
            kernel=None if self.options.winograd_tile is None else _kernel_name(tile),
        )
        if tile is not None:
            return emit_winograd_conv2d(self.builder_, conv, alpha, tile, self.options.block_size)
        return emit_conv2d(self.builder_, conv, alpha, structure, self.options.block_size)

    def _winograd_tile(self, conv, structure: Structure) -> Optional[int]:
        """``m`` of the Winograd F(m, 2) that computes ``conv``, or ``None`` (direct kernel)."""
        output = winograd_output(conv, structure)
        if self.options.winograd_tile is None or output is None:
            return None
        return self.options.winograd_tile(*output)

    def _linear(self, call: relax.Call, linear: LinearCall) -> relax.Expr:
        """Rewrite the Linear layer ``call`` if it has a structure."""
        kernel = linear.kernel
        name = self._name(linear.constant, "linear", kernel.shape)
        structure, reason = self._structure(name, kernel, 1)
        if structure is None:
            self._skip("linear", name, reason, linear.macs, kernel.size)
            return call
        if linear.out_shape is None or (
            self.options.linear_as_conv and static_shape(linear.data) is None
        ):
            self._skip(
                "linear", name, "input or output shape is not static", linear.macs, kernel.size
            )
            return call
        alpha, residual = self._checked_alpha(name, kernel, structure)
        self._record(
            "linear",
            name,
            reason,
            structure,
            residual,
            linear.macs,
            alpha.size * linear.rows,
            kernel.size,
            alpha.size,
        )
        return emit_linear(
            self.builder_,
            linear,
            alpha,
            structure,
            self.options.linear_as_conv,
            self.options.block_size,
        )

    # ------------------------------------------------------------------ helpers
    def _name(self, weight: tvm.ir.Constant, kind: str, shape: Tuple[int, ...]) -> str:
        name = self.options.weight_names.get(weight)
        if name is None:
            name = f"{kind} #{self._next_unnamed()} ({'x'.join(map(str, shape))})"
        return name

    def _unsupported_name(self, weight: relax.Expr, kind: str) -> str:
        """The weight's name if it is a named constant, else a numbered description."""
        if isinstance(weight, tvm.ir.Constant):
            return self._name(weight, kind, tuple(weight.value.shape))
        return f"{kind} #{self._next_unnamed()}"

    def _next_unnamed(self) -> int:
        self.unnamed += 1
        return self.unnamed

    def _tolerance(self, kernel: np.ndarray) -> float:
        return self.options.tol if self.options.tol is not None else default_tolerance(kernel.dtype)

    def _structure(
        self, name: str, kernel: np.ndarray, groups: int
    ) -> Tuple[Optional[Structure], str]:
        """The structure to use for this weight and where it came from, or why there is none."""
        spec = self.options.manifest.layers.get(name)
        if spec is not None:
            try:
                structure = spec.structure(kernel.shape, groups)
            except ValueError as error:
                raise ManifestError(
                    f"{self.options.manifest.source}: {name!r} does not fit its weight of shape "
                    f"{kernel.shape} (groups={groups}): {error}"
                ) from None
            if structure.is_trivial:
                return None, "recorded structure reduces nothing (c = C, n = N)"
            return structure, "manifest"
        if self.options.match_by_value:
            found = detect(kernel, self._tolerance(kernel), groups)
            if found is not None:
                return found, "matched by value"
            return None, "no recorded structure and none detected"
        return None, "no recorded structure"

    def _checked_alpha(
        self, name: str, kernel: np.ndarray, structure: Structure
    ) -> Tuple[np.ndarray, float]:
        """``alpha`` in the weight's dtype and the residual; refuses a weight off its structure."""
        tolerance = self._tolerance(kernel)
        exact = kernel.astype(np.float64)
        residual = structure.residual(exact)
        if residual > tolerance:
            raise StructureMismatchError(
                f"layer {name!r}: weights do not satisfy the recorded {structure}: "
                f"residual {residual:.3e} > tolerance {tolerance:.1e}"
            )
        return structure.decompose(exact).astype(kernel.dtype), residual

    def _skip(self, kind: str, name: str, reason: str, macs: int = 0, params: int = 0) -> None:
        self.report.layers.append(
            LayerReport(name, kind, False, reason, None, None, macs, macs, params, params)
        )

    def _record(
        self,
        kind: str,
        name: str,
        reason: str,
        structure: Structure,
        residual: float,
        macs_before: int,
        macs_after: int,
        params_before: int,
        params_after: int,
        kernel: Optional[str] = None,
    ) -> None:
        self.report.layers.append(
            LayerReport(
                name,
                kind,
                True,
                reason,
                structure,
                residual,
                macs_before,
                macs_after,
                params_before,
                params_after,
                kernel,
            )
        )


def _kernel_name(tile: Optional[int]) -> str:
    """The report's name of the kernel a conv runs as: ``direct`` or ``winograd F(m,2)``."""
    return "direct" if tile is None else f"winograd F({tile},2)"
