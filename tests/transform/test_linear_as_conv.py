"""Linear layers as 1x1 NHWC convs (``linear_as_conv``): IR against expected modules.

The ordinary rewrite and the structured rewrite both emit a Linear layer
(``matmul(x, permute_dims(W))``, or ``matmul(x, Wᵀ)`` as the dynamo exporter stores it) as the
fused NHWC op with a 1x1 kernel: a 4-D channels-last input as it is, any other reshaped to an
image and back. The numerics are in ``tests/integration/test_linear_layers.py``.
"""

import functools

import numpy as np
import tvm
from tvm import relax

from tvm_structconv import ops
from tvm_structconv.manifest import LayerSpec, Manifest
from tvm_structconv.schedules.packing import portable_block_size
from tvm_structconv.structure import Structure
from tvm_structconv.transform import rewrite_ordinary_conv, rewrite_structured_conv


def linear_module(x_shape, weight: np.ndarray, transposed_constant: bool = False):
    """``main(x) = x @ Wᵀ`` as the torch frontend (or the dynamo ONNX exporter) writes it."""
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    constant = relax.const(weight.T.copy() if transposed_constant else weight)
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            rhs = (
                constant
                if transposed_constant
                else builder.emit(relax.op.permute_dims(constant, [1, 0]))
            )
            out = builder.emit_output(builder.emit(relax.op.matmul(x, rhs)))
        builder.emit_func_output(out)
    return builder.get(), constant


def expected_module(x_shape, image, alpha: np.ndarray, structure: Structure):
    """The fused 1x1 NHWC conv on ``x`` reshaped to ``image``, reshaped back."""
    out_features = alpha.shape[0]
    block = portable_block_size(out_features, 1, image[2])
    packed = ops.pack_alpha(alpha[:, :, None, None], block)
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            data = x if tuple(x_shape) == tuple(image) else builder.emit(relax.op.reshape(x, image))
            compute = functools.partial(
                ops.structured_conv2d_nhwc,
                structure=structure,
                strides=[1, 1],
                padding=[0, 0, 0, 0],
                dilation=[1, 1],
                out_dtype="float32",
            )
            out = builder.call_te(
                compute, data, relax.const(packed), primfunc_name_hint="structured_conv2d"
            )
            if tuple(x_shape) != tuple(image):
                out = relax.op.reshape(builder.emit(out), (*x_shape[:-1], out_features))
            out = builder.emit_output(builder.emit(out))
        builder.emit_func_output(out)
    return relax.transform.CanonicalizeBindings()(builder.get())


def test_channels_last_linear_becomes_a_1x1_conv_without_reshapes():
    weight = np.random.default_rng(0).standard_normal((12, 8)).astype("float32")
    before, _ = linear_module((1, 4, 5, 8), weight)
    actual, report = rewrite_ordinary_conv(before, linear_as_conv=True)
    expected = expected_module((1, 4, 5, 8), (1, 4, 5, 8), weight, Structure(8, 1, 8, 1))
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    assert report.rewritten == [(12, 8, 1, 1)]


def test_classifier_linear_is_reshaped_to_an_image_and_back():
    weight = np.random.default_rng(1).standard_normal((10, 16)).astype("float32")
    before, _ = linear_module((6, 16), weight, transposed_constant=True)
    actual, _ = rewrite_ordinary_conv(before, linear_as_conv=True)
    # 6 rows as one image row of 6 pixels (the widest row of at most 32)
    expected = expected_module((6, 16), (1, 1, 6, 16), weight, Structure(16, 1, 16, 1))
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)


def test_linear_layers_stay_matmuls_without_the_option():
    weight = np.random.default_rng(2).standard_normal((10, 16)).astype("float32")
    before, _ = linear_module((6, 16), weight)
    actual, report = rewrite_ordinary_conv(before)
    assert actual.same_as(before) and report.rewritten == []


def test_structured_linear_as_conv_carries_alpha():
    structure = Structure(16, 1, 6, 1)
    alpha = np.random.default_rng(3).standard_normal((5, 6))
    weight = structure.compose(alpha[:, :, None, None])[:, :, 0, 0].astype("float32")
    before, constant = linear_module((2, 3, 16), weight)
    actual, report = rewrite_structured_conv(
        before,
        Manifest({"fc.weight": LayerSpec(6, (1, 1))}),
        {constant: "fc.weight"},
        linear_as_conv=True,
    )
    found = structure.decompose(weight.astype(np.float64)[:, :, None, None])[:, :, 0, 0]
    expected = expected_module((2, 3, 16), (1, 1, 6, 16), found.astype("float32"), structure)
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    (layer,) = report.layers
    assert layer.rewritten and (layer.macs_before, layer.macs_after) == (6 * 5 * 16, 6 * 5 * 6)


def test_matmul_with_a_3d_constant_is_reported_not_rewritten():
    x = relax.Var("x", relax.TensorType((2, 3, 4), "float32"))
    constant = relax.const(np.ones((2, 4, 5), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.matmul(x, constant)))
        builder.emit_func_output(out)
    before = builder.get()
    actual, report = rewrite_structured_conv(before, Manifest({}), linear_as_conv=True)
    assert actual.same_as(before)
    (layer,) = report.layers
    assert not layer.rewritten and "3-D constant, not a Linear layer" in layer.reason
    after, ordinary = rewrite_ordinary_conv(before, linear_as_conv=True)
    assert after.same_as(before) and ordinary.rewritten == []
