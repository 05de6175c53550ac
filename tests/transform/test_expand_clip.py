"""ExpandClip: clip with constant bounds as minimum(maximum(x)), which layout planning passes.

The expanded clip compiled and run against numpy is in
``tests/integration/test_expand_clip_numerics.py``.
"""

import numpy as np
import tvm
from tvm import relax

from tvm_structconv.transform import ExpandClip

from relax_modules import clip_module


def test_clip_becomes_maximum_then_minimum():
    actual = ExpandClip()(clip_module())
    x = relax.Var("x", relax.TensorType((1, 4, 3, 3), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            low = builder.emit(relax.op.maximum(x, relax.const(np.array(0.0, "float32"))))
            out = builder.emit_output(
                builder.emit(relax.op.minimum(low, relax.const(np.array(6.0, "float32"))))
            )
        builder.emit_func_output(out)
    expected = relax.transform.CanonicalizeBindings()(builder.get())
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)


def test_nhwc_layout_planning_passes_through_the_expanded_clip():
    """Between two convs made NHWC by ConvertLayout, ``maximum``/``minimum`` take the NHWC
    tensor as it is (``clip`` would be wrapped in a transpose to NCHW and back)."""
    rng = np.random.default_rng(0)
    first, second = (
        relax.const(rng.standard_normal(shape).astype("float32"))
        for shape in ((4, 4, 3, 3), (4, 4, 1, 1))
    )
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            conv = builder.emit(relax.op.nn.conv2d(x, first, padding=1))
            relu6 = builder.emit(relax.op.clip(conv, 0.0, 6.0))
            out = builder.emit_output(builder.emit(relax.op.nn.conv2d(relu6, second)))
        builder.emit_func_output(out)
    nhwc = {"relax.nn.conv2d": ["NHWC", "OHWI"]}
    actual = relax.transform.ConvertLayout(nhwc)(ExpandClip()(builder.get()))

    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    layouts = dict(data_layout="NHWC", kernel_layout="OHWI", out_layout="NHWC")
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            data = builder.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            kernel = builder.emit(relax.op.permute_dims(first, [0, 2, 3, 1]))
            conv = builder.emit(relax.op.nn.conv2d(data, kernel, padding=1, **layouts))
            low = builder.emit(relax.op.maximum(conv, relax.const(np.array(0.0, "float32"))))
            relu6 = builder.emit(relax.op.minimum(low, relax.const(np.array(6.0, "float32"))))
            kernel = builder.emit(relax.op.permute_dims(second, [0, 2, 3, 1]))
            conv = builder.emit(relax.op.nn.conv2d(relu6, kernel, **layouts))
            out = builder.emit_output(relax.op.permute_dims(conv, [0, 3, 1, 2]))
        builder.emit_func_output(out)
    tvm.ir.assert_structural_equal(actual, builder.get(), map_free_vars=True)


def test_integer_clip_is_left_alone():
    mod = clip_module("int32")
    tvm.ir.assert_structural_equal(ExpandClip()(mod), mod)
