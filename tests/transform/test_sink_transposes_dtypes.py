"""SinkTransposes keeps a constant's dtype when it transposes it: a float64 or int64 model's
layer scale moves with the transpose and the values are numpy's (found while triaging the
mutation survivors of ``transform/``: ``relax.const`` made the float64 constant float32)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_structconv.transform import sink_transposes

NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


def scaled_block(dtype: str, scale: np.ndarray) -> tvm.IRModule:
    """To NCHW, multiply by a (C, 1, 1) constant, back to NHWC."""
    x = relax.Var("x", relax.TensorType((1, 4, 5, 6), dtype))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            nchw = builder.emit(relax.op.permute_dims(x, NHWC_TO_NCHW))
            scaled = builder.emit(relax.op.multiply(nchw, relax.const(scale, dtype)))
            out = builder.emit_output(builder.emit(relax.op.permute_dims(scaled, NCHW_TO_NHWC)))
        builder.emit_func_output(out)
    return builder.get()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64"])
def test_the_transposed_constant_keeps_its_dtype_and_the_values(dtype):
    scale = np.arange(1, 7).reshape(6, 1, 1).astype(dtype)
    moved = sink_transposes(scaled_block(dtype, scale))
    assert "permute_dims" not in moved["main"].script()  # both transposes cancelled
    constants = [c.value.numpy() for c in _constants(moved["main"])]
    assert constants and all(c.dtype == np.dtype(dtype) for c in constants), constants
    np.testing.assert_array_equal(constants[0], scale.reshape(1, 1, 1, 6))
    x = np.arange(120).reshape(1, 4, 5, 6).astype(dtype)
    executable = tvm.compile(moved, target=tvm.target.Target({"kind": "llvm"}))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, x * scale.reshape(1, 1, 1, 6))


def _constants(func: relax.Function) -> list:
    """The constants ``func`` holds, in post order."""
    found = []
    relax.analysis.post_order_visit(
        func, lambda e: found.append(e) if isinstance(e, tvm.ir.GenericConst) else None
    )
    return found
