"""Small Relax modules and helpers both test layers use (tests/transform, tests/integration).

The IR tests compare a pass's output on these modules with an expected module; the numeric
tests compile the same modules and run them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax


def chain_module(x_shape, *layers: Callable[[relax.Expr], relax.Expr], dtype: str = "float32"):
    """``main(x) = layers[-1](… layers[0](x))``, ``x`` of ``x_shape`` and ``dtype``, each
    layer's result bound in one dataflow block."""
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = x
            for layer in layers:
                out = builder.emit(layer(out))
            out = builder.emit_output(out)
        builder.emit_func_output(out)
    return builder.get()


def conv2d_module(x_shape, weight: relax.Expr, dtype: str = "float32", **attrs) -> tvm.IRModule:
    """``main(x) = conv2d(x, weight, **attrs)``, ``x`` of ``x_shape`` and ``dtype``."""
    return chain_module(x_shape, lambda x: relax.op.nn.conv2d(x, weight, **attrs), dtype=dtype)


def clip_module(dtype: str = "float32") -> tvm.IRModule:
    """``main(x) = clip(x, 0, 6)`` (ReLU6) for ``x`` of shape ``(1, 4, 3, 3)`` and ``dtype``."""
    return chain_module((1, 4, 3, 3), lambda x: relax.op.clip(x, 0.0, 6.0), dtype=dtype)


def bn_params(channels: int, seed: int) -> list[np.ndarray]:
    """Non-trivial BatchNorm gamma, beta, moving mean and moving variance (float32)."""
    rng = np.random.default_rng(seed)
    gamma, beta, mean = (rng.uniform(-2, 2, channels).astype("float32") for _ in range(3))
    return [gamma, beta, mean, rng.uniform(0.2, 2, channels).astype("float32")]


def calls(mod: tvm.IRModule, op_name: str) -> list[relax.Call]:
    """Every call of ``op_name`` in ``main``, in post order."""
    found = []
    relax.analysis.post_order_visit(
        mod["main"],
        lambda e: found.append(e) if isinstance(e, relax.Call) and e.op.name == op_name else None,
    )
    return found


def fused_conv_module(
    x_shape, compute, weight: np.ndarray, layout_transposes: bool = False, nchw_input: bool = False
) -> tvm.IRModule:
    """What the conv rewrites emit: ``main(x) = call_te(compute, x, const(weight))``.

    With ``layout_transposes``, between the NCHW→NHWC ``permute_dims`` of ``x`` and the one back
    that ``relax.transform.ConvertLayout`` leaves around an NHWC conv; with ``nchw_input`` too,
    the op reads ``x`` itself (a few-channel input, read as NHWC inside the op) and only the
    transpose back remains.
    """
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            transposed = layout_transposes and not nchw_input
            data = builder.emit(relax.op.permute_dims(x, [0, 2, 3, 1])) if transposed else x
            call = builder.call_te(
                compute, data, relax.const(weight), primfunc_name_hint="structured_conv2d"
            )
            if layout_transposes:
                call = relax.op.permute_dims(builder.emit(call), [0, 3, 1, 2])
            out = builder.emit_output(call)
        builder.emit_func_output(out)
    return builder.get()
