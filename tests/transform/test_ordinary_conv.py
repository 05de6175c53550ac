"""RewriteOrdinaryConv: every constant-weight conv becomes the fused op with the trivial structure.

IR against an expected module (NCHW, and NHWC after ConvertLayout) and what it leaves alone; the
rewritten NHWC conv compiled and run against torch is in
``tests/integration/test_ordinary_conv_numerics.py``.
"""

import functools

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_structconv import ops
from tvm_structconv.structure import Structure
from tvm_structconv.transform import RewriteOrdinaryConv, rewrite_ordinary_conv
from tvm_structconv.transform.conv_call import NCHW_INPUT_MAX_CHANNELS

from relax_modules import conv2d_module as module
from relax_modules import fused_conv_module


def test_nchw_conv_becomes_the_trivial_structured_op():
    weight = np.random.default_rng(0).standard_normal((6, 2, 3, 3)).astype("float32")
    before = module((1, 4, 8, 8), relax.const(weight), padding=1, groups=2)
    actual, report = rewrite_ordinary_conv(before)

    compute = functools.partial(
        ops.structured_conv2d,
        structure=Structure(4, 3, 4, 3, 2),
        strides=[1, 1],
        padding=[1, 1, 1, 1],
        dilation=[1, 1],
        out_dtype="float32",
    )
    expected = fused_conv_module((1, 4, 8, 8), compute, weight)
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    assert report.rewritten == [(6, 2, 3, 3)] and report.skipped == []
    tvm.ir.assert_structural_equal(RewriteOrdinaryConv()(before), expected, map_free_vars=True)


@pytest.mark.parametrize("channels", [3, 6])
def test_nhwc_conv_after_convert_layout_matches_expected_module(channels):
    """The OHWI weight under ``permute_dims`` is read back as OIHW and packed in blocks of 4
    output channels; the transpose back to NCHW that ConvertLayout puts after the conv stays,
    the one before it only for an input of more than ``NCHW_INPUT_MAX_CHANNELS`` channels
    (fewer, an image, the op reads in its NCHW layout)."""
    weight = np.random.default_rng(1).standard_normal((8, channels, 3, 2)).astype("float32")
    shape = (1, channels, 9, 7)
    before = module(shape, relax.const(weight), strides=2, padding=(1, 0, 2, 1), dilation=1)
    before = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(before)
    actual, report = rewrite_ordinary_conv(before, lambda out_channels, groups, width: 4)

    nchw_input = channels <= NCHW_INPUT_MAX_CHANNELS
    compute = functools.partial(
        ops.structured_conv2d_nhwc,
        structure=Structure(channels, (3, 2), channels, (3, 2)),
        strides=[2, 2],
        padding=[1, 0, 2, 1],
        dilation=[1, 1],
        out_dtype="float32",
        **({"data_layout": "NCHW"} if nchw_input else {}),
    )
    expected = fused_conv_module(
        shape, compute, ops.pack_alpha(weight, 4), layout_transposes=True, nchw_input=nchw_input
    )
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    assert report.rewritten == [(8, channels, 3, 2)] and report.skipped == []
    tvm.ir.assert_structural_equal(
        RewriteOrdinaryConv(lambda *_: 4)(before), expected, map_free_vars=True
    )  # the pass form


def test_conv_with_a_computed_weight_is_left_alone():
    x = relax.Var("x", relax.TensorType((1, 2, 5, 5), "float32"))
    w = relax.Var("w", relax.TensorType((2, 2, 3, 3), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x, w]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.nn.conv2d(x, w)))
        builder.emit_func_output(out)
    mod = builder.get()
    after, report = rewrite_ordinary_conv(mod)
    assert after.same_as(mod)
    assert report.rewritten == []
    assert report.skipped == [("conv2d #1 (2x2x3x3)", "weight is not a constant")]
    assert report.summary() == [
        "1 conv left to TVM's own conv2d (weight is not a constant): conv2d #1 (2x2x3x3)"
    ]


def test_the_pass_leaves_linear_layers_unless_asked():
    x = relax.Var("x", relax.TensorType((2, 8), "float32"))
    weight = relax.const(np.ones((3, 8), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            rhs = builder.emit(relax.op.permute_dims(weight, [1, 0]))
            out = builder.emit_output(builder.emit(relax.op.matmul(x, rhs)))
        builder.emit_func_output(out)
    mod = builder.get()
    assert RewriteOrdinaryConv()(mod).same_as(mod)
    expected, report = rewrite_ordinary_conv(mod, linear_as_conv=True)
    assert report.rewritten == [(3, 8, 1, 1)]
    tvm.ir.assert_structural_equal(RewriteOrdinaryConv(linear_as_conv=True)(mod), expected)
