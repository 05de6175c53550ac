"""ONNX op converters used instead of TVM's where TVM's form hides an op from the Relax passes.

TVM 0.27's ONNX importer converts ``Clip`` (ReLU6 in MobileNets, hard-swish parts) with
``emit_te(topi.maximum)`` / ``emit_te(topi.minimum)``: a ``call_tir`` of a PrimFunc, which
``ConvertLayout`` cannot see through. Planned in NHWC, every ReLU6 then ran between two layout
transposes as a kernel of its own, outside the conv whose epilogue it is (MobileNetV2: 17
extra passes over the largest activations). :class:`Clip` emits Relax's own ``maximum`` and
``minimum`` instead (with ONNX's NaN-bound handling kept), which ConvertLayout plans and
``FuseOps`` fuses into the conv.

:func:`relax_converters` installs the converters for the duration of one import.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

__all__ = ["Clip", "relax_converters"]


class Clip(onnx_frontend.Clip):
    """ONNX ``Clip`` as Relax ``maximum`` / ``minimum`` (TVM's emits opaque ``call_tir``)."""

    @classmethod
    def _impl_v1(cls, bb: relax.BlockBuilder, inputs: list, attr: dict, params: Any) -> relax.Expr:
        dtype = inputs[0].ty.dtype
        low = relax.const(float(attr.get("min", -np.inf)), dtype)
        high = relax.const(float(attr.get("max", np.inf)), dtype)
        return bb.emit(relax.op.minimum(bb.emit(relax.op.maximum(inputs[0], low)), high))

    @classmethod
    def _impl_v13(cls, bb: relax.BlockBuilder, inputs: list, attr: dict, params: Any) -> relax.Expr:
        result = inputs[0]
        if inputs[1] is not None:
            low = cls._sanitize_nan_clip_bound(bb, inputs[1], for_min=True)
            result = bb.emit(relax.op.maximum(result, low))
        if inputs[2] is not None:
            high = cls._sanitize_nan_clip_bound(bb, inputs[2], for_min=False)
            result = bb.emit(relax.op.minimum(result, high))
        return result


@contextlib.contextmanager
def relax_converters() -> Iterator[None]:
    """Import ONNX with :class:`Clip` in place of TVM's converter (restored afterwards)."""
    original = onnx_frontend._get_convert_map

    def convert_map() -> dict:
        converters = original()
        converters["Clip"] = Clip
        return converters

    onnx_frontend._get_convert_map = convert_map
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
