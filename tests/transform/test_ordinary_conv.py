"""RewriteOrdinaryConv: every constant-weight conv becomes the fused op with the trivial structure."""

import functools

import numpy as np
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from tvm_structconv import ops
from tvm_structconv.structure import Structure
from tvm_structconv.transform import RewriteOrdinaryConv, rewrite_ordinary_conv

TARGET = tvm.target.Target({"kind": "llvm"})


def module(x_shape, weight, **attrs):
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(builder.emit(relax.op.nn.conv2d(x, weight, **attrs)))
        builder.emit_func_output(out)
    return builder.get()


def test_nchw_conv_becomes_the_trivial_structured_op():
    weight = np.random.default_rng(0).standard_normal((6, 2, 3, 3)).astype("float32")
    before = module((1, 4, 8, 8), relax.const(weight), padding=1, groups=2)
    actual, report = rewrite_ordinary_conv(before)

    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            compute = functools.partial(ops.structured_conv2d, structure=Structure(4, 3, 4, 3, 2),
                                        strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1],
                                        out_dtype="float32")
            call = builder.call_te(compute, x, relax.const(weight),
                                   primfunc_name_hint="structured_conv2d")
            out = builder.emit_output(builder.emit(call))
        builder.emit_func_output(out)
    expected = relax.transform.CanonicalizeBindings()(builder.get())
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    assert report.rewritten == [(6, 2, 3, 3)] and report.skipped == []
    tvm.ir.assert_structural_equal(RewriteOrdinaryConv()(before), expected, map_free_vars=True)


def test_nhwc_conv_after_convert_layout_is_packed_and_exact():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((8, 3, 3, 2)).astype("float32")
    x = rng.standard_normal((1, 3, 9, 7)).astype("float32")
    mod = module(x.shape, relax.const(weight), strides=2, padding=(1, 0, 2, 1), dilation=1)
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    rewritten = RewriteOrdinaryConv(lambda out_channels, groups, width: 4)(mod)
    text = rewritten.script()
    assert "R.nn.conv2d" not in text and "structured_conv2d" in text
    executable = tvm.compile(rewritten, target=TARGET)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    expected = F.conv2d(F.pad(torch.from_numpy(x), (0, 1, 1, 2)), torch.from_numpy(weight), stride=2)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


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
    assert report.summary() == ["1 conv left to TVM's own conv2d (weight is not a constant): "
                                "conv2d #1 (2x2x3x3)"]
