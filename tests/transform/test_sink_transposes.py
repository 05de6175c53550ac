"""sink_transposes: IR against expected modules (the numerics are in
``tests/integration/test_sink_transposes_numerics.py``)."""

import numpy as np
import tvm
from tvm import relax

from tvm_structconv.transform import SinkTransposes, sink_transposes

NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


def layer_scale_block(scale: np.ndarray):
    """ConvNeXt's tail in NHWC after ConvertLayout: to NCHW, scale, add the residual, back."""
    x = relax.Var("x", relax.TensorType((1, 4, 5, 6), "float32"))
    r = relax.Var("r", relax.TensorType((1, 4, 5, 6), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x, r]):
        with builder.dataflow():
            x_nchw = builder.emit(relax.op.permute_dims(x, NHWC_TO_NCHW))
            r_nchw = builder.emit(relax.op.permute_dims(r, NHWC_TO_NCHW))
            scaled = builder.emit(relax.op.multiply(relax.const(scale), x_nchw))
            added = builder.emit(relax.op.add(scaled, r_nchw))
            out = builder.emit_output(builder.emit(relax.op.permute_dims(added, NCHW_TO_NHWC)))
        builder.emit_func_output(out)
    return builder.get()


def test_transposes_around_elementwise_ops_cancel():
    scale = np.random.default_rng(0).standard_normal((6, 1, 1)).astype("float32")
    x = relax.Var("x", relax.TensorType((1, 4, 5, 6), "float32"))
    r = relax.Var("r", relax.TensorType((1, 4, 5, 6), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x, r]):
        with builder.dataflow():
            # the (C, 1, 1) scale broadcast to NCHW is (1, 1, 1, C) in NHWC
            nhwc_scale = relax.const(scale.reshape(1, 6, 1, 1).transpose(0, 2, 3, 1).copy())
            scaled = builder.emit(relax.op.multiply(nhwc_scale, x))
            out = builder.emit_output(relax.op.add(scaled, r))
        builder.emit_func_output(out)
    expected = builder.get()
    before = layer_scale_block(scale)
    tvm.ir.assert_structural_equal(sink_transposes(before), expected, map_free_vars=True)
    tvm.ir.assert_structural_equal(SinkTransposes()(before), expected, map_free_vars=True)


def test_consecutive_transposes_compose_and_identities_vanish():
    x = relax.Var("x", relax.TensorType((2, 3, 4, 5), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            a = builder.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            b = builder.emit(relax.op.permute_dims(a, [0, 1, 3, 2]))  # = x permuted [0, 2, 1, 3]
            c = builder.emit(relax.op.permute_dims(b, [0, 1, 2, 3]))  # identity
            out = builder.emit_output(builder.emit(relax.op.nn.relu(c)))
        builder.emit_func_output(out)
    before = builder.get()

    x = relax.Var("x", relax.TensorType((2, 3, 4, 5), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            # relu moves above the single transpose left, which ends the function
            relu = builder.emit(relax.op.nn.relu(x))
            out = builder.emit_output(relax.op.permute_dims(relu, [0, 2, 1, 3]))
        builder.emit_func_output(out)
    tvm.ir.assert_structural_equal(sink_transposes(before), builder.get(), map_free_vars=True)


def test_a_transpose_with_another_use_stays():
    x = relax.Var("x", relax.TensorType((1, 4, 5, 6), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            x_nchw = builder.emit(relax.op.permute_dims(x, NHWC_TO_NCHW))
            relu = builder.emit(relax.op.nn.relu(x_nchw))
            both = builder.emit(relax.Tuple([relu, x_nchw]))
            out = builder.emit_output(both)
        builder.emit_func_output(out)
    before = builder.get()
    assert sink_transposes(before).same_as(before)


def test_inputs_permuted_differently_stay():
    x = relax.Var("x", relax.TensorType((3, 3, 3), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            a = builder.emit(relax.op.permute_dims(x, [1, 0, 2]))
            b = builder.emit(relax.op.permute_dims(x, [2, 1, 0]))
            out = builder.emit_output(builder.emit(relax.op.add(a, b)))
        builder.emit_func_output(out)
    before = builder.get()
    assert sink_transposes(before).same_as(before)
