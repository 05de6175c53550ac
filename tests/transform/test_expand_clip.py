"""ExpandClip: clip with constant bounds as minimum(maximum(x)), which layout planning passes."""

import numpy as np
import tvm
from tvm import relax

from tvm_structconv.transform import ExpandClip


def clip_module(dtype="float32"):
    x = relax.Var("x", relax.TensorType((1, 4, 3, 3), dtype))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.clip(x, 0.0, 6.0)))
        builder.emit_func_output(out)
    return builder.get()


def test_clip_becomes_maximum_then_minimum():
    actual = ExpandClip()(clip_module())
    x = relax.Var("x", relax.TensorType((1, 4, 3, 3), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            low = builder.emit(relax.op.maximum(x, relax.const(np.array(0.0, "float32"))))
            out = builder.emit_output(builder.emit(
                relax.op.minimum(low, relax.const(np.array(6.0, "float32")))))
        builder.emit_func_output(out)
    expected = relax.transform.CanonicalizeBindings()(builder.get())
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)


def test_values_are_those_of_clip_and_nhwc_planning_passes_through():
    mod = ExpandClip()(clip_module())
    x = np.linspace(-10, 10, 36, dtype="float32").reshape(1, 4, 3, 3)
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, np.clip(x, 0, 6))


def test_integer_clip_is_left_alone():
    mod = clip_module("int32")
    tvm.ir.assert_structural_equal(ExpandClip()(mod), mod)
