"""What the conv rewrites share: reading a Relax ``conv2d`` call and emitting the fused TE op.

Not a pass: :class:`~tvm_structconv.transform.RewriteStructuredConv` and
:class:`~tvm_structconv.transform.RewriteOrdinaryConv` both read a conv with
:func:`read_conv2d` and replace it with :func:`emit_conv2d`.

Two forms of conv are understood:

* NCHW data, OIHW kernel, NCHW output — what the frontends give; emitted as
  :func:`tvm_structconv.ops.structured_conv2d` with ``alpha`` as it is;
* NHWC data, any kernel layout (a permutation of ``OIHW``), NHWC output — what
  ``relax.transform.ConvertLayout`` makes of it; the kernel may be a constant or
  ``permute_dims`` of a constant (the layout change of the weight, not yet folded). Emitted as
  :func:`tvm_structconv.ops.structured_conv2d_nhwc` with ``alpha`` packed by
  :func:`tvm_structconv.ops.pack_alpha` at compile time.

The name of the weight is that of the constant under any ``permute_dims``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import numpy as np
import tvm
from tvm import relax

from tvm_structconv import ops, winograd
from tvm_structconv.schedules.packing import BlockSize, padded_channels, portable_block_size
from tvm_structconv.structure import Structure
from tvm_structconv.transform.relax_functions import typed_const

#: ``primfunc_name_hint`` of the fused structured conv and of its Winograd form (TVM may add
#: a numeric suffix to the function's name).
STRUCTURED_CONV = "structured_conv2d"
WINOGRAD_CONV = "structured_winograd_conv2d"

__all__ = [
    "STRUCTURED_CONV",
    "WINOGRAD_CONV",
    "NCHW_INPUT_MAX_CHANNELS",
    "Conv2dCall",
    "LinearCall",
    "bound_value",
    "emit_conv2d",
    "emit_linear",
    "emit_winograd_conv2d",
    "winograd_output",
    "read_conv2d",
    "read_linear",
    "static_shape",
]


#: An NHWC conv reads an NCHW input of at most this many channels directly (image inputs:
#: grey, RGB, RGBA), the layout change inside its padding stage; wider NCHW tensors keep their
#: transpose (a gather per channel vector would cost more than the pass it saves).
NCHW_INPUT_MAX_CHANNELS = 4


@dataclass(frozen=True)
class Conv2dCall:
    """A Relax ``conv2d`` with a constant weight, in one of the understood forms.

    Attributes
    ----------
    data
        The input expression.
    constant
        The weight constant (under ``permute_dims`` for an NHWC conv after ``ConvertLayout``).
    kernel
        The weight as a numpy array in OIHW.
    layout
        ``"NCHW"`` or ``"NHWC"`` (data and output alike).
    strides, padding, dilation, groups
        The conv's attributes; ``padding`` is ``(top, left, bottom, right)``.
    out_dtype
        The output dtype.
    out_shape
        The output shape.
    nchw_data
        For an NHWC conv whose input is ``permute_dims(x, [0, 2, 3, 1])`` of an NCHW ``x`` of
        at most :data:`NCHW_INPUT_MAX_CHANNELS` channels (a model's image input after
        ``ConvertLayout``): ``x``, which the fused op reads directly, so the transpose is left
        without a use.
    """

    data: relax.Expr
    constant: tvm.ir.Constant
    kernel: np.ndarray
    layout: str
    strides: Tuple[int, int]
    padding: Tuple[int, int, int, int]
    dilation: Tuple[int, int]
    groups: int
    out_dtype: str
    out_shape: Tuple[int, ...]
    nchw_data: Optional[relax.Expr] = None

    @property
    def pixels(self) -> int:
        """Output pixels over the batch (``B · Ho · Wo``)."""
        spatial = self.out_shape[1:3] if self.layout == "NHWC" else self.out_shape[2:]
        return self.out_shape[0] * int(np.prod(spatial))

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the conv as it is."""
        return int(np.prod(self.kernel.shape)) * self.pixels

    @property
    def out_width(self) -> int:
        """Width of the output."""
        return int(self.out_shape[2] if self.layout == "NHWC" else self.out_shape[3])


def read_conv2d(
    call: relax.Call, lookup: Callable[[relax.Var], Optional[relax.Expr]]
) -> Union[Conv2dCall, str]:
    """The conv ``call`` as a :class:`Conv2dCall`, or the reason it is not one we handle.

    Parameters
    ----------
    call
        A ``relax.nn.conv2d`` call.
    lookup
        The value bound to a variable (``PyExprMutator.lookup_binding``), for a weight that is
        a variable bound to ``permute_dims(constant)``.
    """
    data, weight = call.args
    attrs = call.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    weight = bound_value(weight, lookup)
    axes = None
    if isinstance(weight, relax.Call) and weight.op.same_as(tvm.ir.Op.get("relax.permute_dims")):
        axes = weight.attrs.axes
        weight = bound_value(weight.args[0], lookup)
    if not isinstance(weight, tvm.ir.Constant):
        return "weight is not a constant"
    shapes = (call.ty.shape, getattr(data.ty, "shape", None))
    if any(
        shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape) for shape in shapes
    ):
        return "input or output shape is not static"
    array = weight.value.numpy()
    if axes is not None:
        array = array.transpose([int(a) for a in axes]) if len(axes) else array.transpose()
    if layouts == ("NCHW", "OIHW", "NCHW"):
        layout = "NCHW"
    elif layouts[0] == layouts[2] == "NHWC" and sorted(layouts[1]) == sorted("OIHW"):
        layout = "NHWC"
    else:
        return f"layout {'/'.join(layouts)} is not NCHW/OIHW/NCHW or NHWC/*/NHWC"
    kernel = array.transpose([layouts[1].index(axis) for axis in "OIHW"])
    return Conv2dCall(
        nchw_data=_nchw_input(data, lookup) if layout == "NHWC" else None,
        data=data,
        constant=weight,
        kernel=np.ascontiguousarray(kernel),
        layout=layout,
        strides=tuple(int(s) for s in attrs.strides),
        padding=tuple(int(p) for p in attrs.padding),
        dilation=tuple(int(d) for d in attrs.dilation),
        groups=int(attrs.groups),
        out_dtype=str(call.ty.dtype),
        out_shape=tuple(int(d) for d in call.ty.shape),
    )


def _nchw_input(
    data: relax.Expr, lookup: Callable[[relax.Var], Optional[relax.Expr]]
) -> Optional[relax.Expr]:
    """``x`` when ``data`` is ``permute_dims(x, [0, 2, 3, 1])`` of a few-channel NCHW ``x``."""
    value = bound_value(data, lookup)
    if not (
        isinstance(value, relax.Call)
        and value.op.same_as(tvm.ir.Op.get("relax.permute_dims"))
        and value.attrs.axes is not None
        and [int(a) for a in value.attrs.axes] == [0, 2, 3, 1]
    ):
        return None
    shape = static_shape(value.args[0])
    if shape is None or len(shape) != 4 or shape[1] > NCHW_INPUT_MAX_CHANNELS:
        return None
    return value.args[0]


def bound_value(
    expr: relax.Expr, lookup: Callable[[relax.Var], Optional[relax.Expr]]
) -> relax.Expr:
    """The value bound to ``expr`` if it is a variable bound in the function, else ``expr``."""
    if isinstance(expr, relax.Var):
        value = lookup(expr)
        if value is not None:
            return value
    return expr


def emit_conv2d(
    builder: relax.BlockBuilder,
    conv: Conv2dCall,
    alpha: np.ndarray,
    structure: Structure,
    block_size: BlockSize = portable_block_size,
) -> relax.Expr:
    """``call_te`` of the fused op computing ``conv`` from ``alpha`` (OIHW) and ``structure``.

    NHWC: ``alpha`` packed in blocks of ``block_size``'s output channels; a block that does
    not divide the outputs (:data:`~tvm_structconv.schedules.packing.BlockSize`) gets zero
    filters up to a multiple of it, and the padded outputs are sliced off.
    """
    settings = dict(
        structure=structure,
        strides=list(conv.strides),
        padding=list(conv.padding),
        dilation=list(conv.dilation),
        out_dtype=conv.out_dtype,
    )
    if conv.layout == "NCHW":
        compute = functools.partial(ops.structured_conv2d, **settings)
        return builder.call_te(
            compute, conv.data, typed_const(alpha), primfunc_name_hint=STRUCTURED_CONV
        )
    out_channels = alpha.shape[0]
    block = block_size(out_channels, structure.groups, conv.out_width)
    padded = padded_channels(out_channels, block)
    if padded != out_channels:  # zero filters fill the last block; their outputs are cut off
        alpha = np.concatenate(
            [alpha, np.zeros((padded - out_channels, *alpha.shape[1:]), alpha.dtype)]
        )
    if conv.nchw_data is not None:
        settings["data_layout"] = "NCHW"
    compute = functools.partial(ops.structured_conv2d_nhwc, **settings)
    out = builder.call_te(
        compute,
        conv.data if conv.nchw_data is None else conv.nchw_data,
        typed_const(ops.pack_alpha(alpha, block)),
        primfunc_name_hint=STRUCTURED_CONV,
    )
    if padded == out_channels:
        return out
    return builder.emit(relax.op.strided_slice(out, axes=[3], begin=[0], end=[out_channels]))


def winograd_output(conv: Conv2dCall, structure: Structure) -> Optional[Tuple[int, int, int]]:
    """``(batch, out_height, out_width)`` of a conv Winograd F(m, 2) can compute, else ``None``.

    An NHWC float32 conv of NHWC data with stride 1, dilation 1 and one group whose structure
    is a 3×3 kernel over all input channels pooled to a 2×2 ``alpha`` (``c = C``, ``n = 2``).
    """
    if (
        conv.layout != "NHWC"
        or conv.nchw_data is not None
        or conv.out_dtype != "float32"
        or conv.strides != (1, 1)
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or structure.kernel_size != (3, 3)
        or structure.reduced_kernel_size != (2, 2)
        or structure.reduced_channels != structure.in_channels
    ):
        return None
    batch, out_height, out_width, _ = conv.out_shape
    return batch, out_height, out_width


def emit_winograd_conv2d(
    builder: relax.BlockBuilder,
    conv: Conv2dCall,
    alpha: np.ndarray,
    tile: int,
    block_size: BlockSize = portable_block_size,
) -> relax.Expr:
    """``call_te`` of :func:`tvm_structconv.winograd.winograd_structured_conv2d_nhwc`.

    ``alpha`` (OIHW, ``(K, C, 2, 2)``) is transformed at compile time
    (:func:`~tvm_structconv.winograd.transform_alpha`), its output channels packed in blocks of
    ``block_size``'s choice (zero filters fill the last block; the output has ``K`` channels).
    ``conv`` must pass :func:`winograd_output`.
    """
    out_channels = alpha.shape[0]
    block = block_size(out_channels, 1, conv.out_width)
    compute = functools.partial(
        winograd.winograd_structured_conv2d_nhwc,
        out_channels=out_channels,
        padding=list(conv.padding),
        out_dtype=conv.out_dtype,
    )
    transformed = typed_const(winograd.transform_alpha(alpha, tile, block))
    return builder.call_te(compute, conv.data, transformed, primfunc_name_hint=WINOGRAD_CONV)


@dataclass(frozen=True)
class LinearCall:
    """A Relax ``matmul(x, Wᵀ)`` of a Linear layer: ``W`` a 2-D constant, ``x`` any rank.

    Attributes
    ----------
    data
        The input expression ``x`` (``(..., in_features)``).
    constant
        The weight constant: ``W`` under ``permute_dims``, or ``Wᵀ`` as the dynamo ONNX exporter
        stores it.
    kernel
        The weight as a numpy array ``(out_features, in_features)``.
    out_dtype
        The output dtype.
    out_shape
        The output shape (static, or ``None``).
    """

    data: relax.Expr
    constant: tvm.ir.Constant
    kernel: np.ndarray
    out_dtype: str
    out_shape: Optional[Tuple[int, ...]]

    @property
    def rows(self) -> int:
        """Rows the weight multiplies (every axis of the output but the last); 0 if not static."""
        return int(np.prod(self.out_shape[:-1])) if self.out_shape is not None else 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the layer as it is."""
        return int(self.kernel.size) * self.rows


def static_shape(expr: relax.Expr) -> Optional[Tuple[int, ...]]:
    """The shape of ``expr``'s tensor type as integers, or ``None`` when any dim is symbolic."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def read_linear(
    call: relax.Call, lookup: Callable[[relax.Var], Optional[relax.Expr]]
) -> Union[LinearCall, str, None]:
    """The ``matmul`` ``call`` as a :class:`LinearCall`, a reason, or ``None``.

    ``None`` when the second operand is not a constant (or ``permute_dims`` of one): not a
    layer. A reason when it is a constant but not a Linear layer's weight (not 2-D, or permuted
    other than ``[1, 0]``).
    """
    if not call.op.same_as(tvm.ir.Op.get("relax.matmul")):
        return None
    data, weight = call.args
    weight = bound_value(weight, lookup)
    transposed = isinstance(weight, relax.Call) and weight.op.same_as(
        tvm.ir.Op.get("relax.permute_dims")
    )
    if transposed:
        axes = weight.attrs.axes
        weight = bound_value(weight.args[0], lookup)
    if not isinstance(weight, tvm.ir.Constant):
        return None
    array = weight.value.numpy()
    if array.ndim != 2:
        return f"matmul with a {array.ndim}-D constant, not a Linear layer"
    if transposed and axes is not None and [int(a) for a in axes] != [1, 0]:
        return "a weight permuted other than [1, 0], not a Linear layer"
    kernel = array if transposed else array.T
    return LinearCall(
        data=data,
        constant=weight,
        kernel=np.ascontiguousarray(kernel),
        out_dtype=str(call.ty.dtype),
        out_shape=static_shape(call),
    )


def _rows_as_image(rows: int) -> Tuple[int, int]:
    """``(height, width)`` with ``height · width = rows``: the widest row of at most 32 pixels."""
    width = max(d for d in range(1, min(rows, 32) + 1) if rows % d == 0)
    return rows // width, width


def emit_linear(
    builder: relax.BlockBuilder,
    linear: LinearCall,
    alpha: np.ndarray,
    structure: Structure,
    as_conv: bool,
    block_size: BlockSize = portable_block_size,
) -> relax.Expr:
    """The fused op computing ``linear`` from ``alpha`` (``(out, c)``) and ``structure``.

    With ``as_conv`` (CPU builds) a 1×1 NHWC conv, its kernel packed like any conv's: a 4-D
    input ``(N, H, W, C)`` (a Linear layer on channels-last activations, as in ConvNeXt) as it
    is, any other reshaped to ``(1, h, w, C)`` with ``h · w`` its rows, and the result reshaped
    back. Else :func:`tvm_structconv.ops.structured_dense` on the input as it is.
    ``as_conv`` needs a static input shape.
    """
    if not as_conv:
        compute = functools.partial(
            ops.structured_dense, structure=structure, out_dtype=linear.out_dtype
        )
        return builder.call_te(
            compute, linear.data, typed_const(alpha), primfunc_name_hint="structured_dense"
        )
    in_shape = static_shape(linear.data)
    assert in_shape is not None and linear.out_shape is not None, "as_conv needs static shapes"
    if len(in_shape) == 4:
        image = in_shape
    else:
        image = (1, *_rows_as_image(linear.rows), in_shape[-1])
    data = linear.data
    if image != in_shape:
        data = builder.emit(relax.op.reshape(data, image))
    out_image = (*image[:3], alpha.shape[0])
    conv = Conv2dCall(
        data=data,
        constant=linear.constant,
        kernel=linear.kernel[:, :, None, None],
        layout="NHWC",
        strides=(1, 1),
        padding=(0, 0, 0, 0),
        dilation=(1, 1),
        groups=1,
        out_dtype=linear.out_dtype,
        out_shape=out_image,
    )
    out = emit_conv2d(builder, conv, alpha[:, :, None, None], structure, block_size)
    if out_image != linear.out_shape:
        out = relax.op.reshape(builder.emit(out), linear.out_shape)
    return out
