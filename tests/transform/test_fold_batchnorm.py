"""FoldBatchNorm: IR vs TVMScript, chains it must leave alone, the folded constants vs torch.

The folded models compiled and run against torch and onnxruntime are in
``tests/integration/test_batchnorm_folding_numerics.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from hypothesis import given
from hypothesis import strategies as st
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_structconv.transform import FoldBatchNorm, fold_batchnorm

from relax_modules import bn_params, calls

EPS = 1e-5
CHANNELS = 4


def _folded(weight, gamma, beta, mean, var, bias=0.0):
    """Reference fold in float64 ``W s``, ``(b - mean) s + beta``; ``s = gamma / sqrt(v + eps)``."""
    gamma, beta, mean, var = (t.astype(np.float64) for t in (gamma, beta, mean, var))
    s = gamma / np.sqrt(var + EPS)
    shift = (bias - mean) * s + beta
    new_weight = weight.astype(np.float64) * s[:, None, None, None]
    return new_weight.astype("float32"), shift.reshape(1, -1, 1, 1).astype("float32")


# ------------------------------------------------------------------------- IR vs TVMScript
def test_conv_bn_folds_into_conv_add():
    weight = np.random.default_rng(0).standard_normal((CHANNELS, 3, 3, 3)).astype("float32")
    gamma, beta, mean, var = bn_params(CHANNELS, 1)
    new_weight, new_bias = _folded(weight, gamma, beta, mean, var)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 6, 6), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(weight))
                bn = R.nn.batch_norm(
                    conv,
                    R.const(gamma),
                    R.const(beta),
                    R.const(mean),
                    R.const(var),
                    axis=1,
                    epsilon=EPS,
                    training=False,
                )
                y = bn[0]
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 6, 6), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(new_weight))
                y = R.add(conv, R.const(new_bias))
                R.output(y)
            return y

    after, report = fold_batchnorm(Before)
    tvm.ir.assert_structural_equal(after, Expected)
    assert report.folded == ["conv2d #1 (4x3x3x3)"]
    tvm.ir.assert_structural_equal(FoldBatchNorm()(Before), Expected)  # the pass form


def test_conv_bias_bn_as_torch_export_makes_it_folds():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((CHANNELS, 3, 3, 3)).astype("float32")
    conv_bias = rng.standard_normal(CHANNELS).astype("float32")
    gamma, beta, mean, var = bn_params(CHANNELS, 3)
    new_weight, new_bias = _folded(weight, gamma, beta, mean, var, bias=conv_bias)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 3, 3), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(weight), strides=[2, 2])
                bias = R.reshape(R.const(conv_bias), R.shape([1, 4, 1, 1]))
                biased = R.add(conv, bias)
                bn = R.nn.batch_norm(
                    biased,
                    R.const(gamma),
                    R.const(beta),
                    R.const(mean),
                    R.const(var),
                    axis=1,
                    epsilon=EPS,
                    training=False,
                )
                y = bn[0]
                z = R.nn.relu(y)
                R.output(z)
            return z

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 3, 3), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(new_weight), strides=[2, 2])
                y = R.add(conv, R.const(new_bias))
                z = R.nn.relu(y)
                R.output(z)
            return z

    tvm.ir.assert_structural_equal(FoldBatchNorm()(Before), Expected)


# ------------------------------------------------------------------------- built by BlockBuilder
def _chain(
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    bias_form: str = "reshape",
    bias_first: bool = False,
    groups: int = 1,
    epsilon: float = EPS,
    center: bool = True,
    scale: bool = True,
    training: bool = False,
    axis: int = 1,
    extra_use: str | None = None,
) -> tuple[tvm.IRModule, relax.Expr]:
    """``main(x) = batch_norm(conv2d(x, W) [+ b])[0]``; returns the module and the weight.

    ``weight=None`` makes the weight a function parameter; ``extra_use`` ("conv", "add" or
    "stats") makes that intermediate value a second output of ``main``.
    """
    in_channels = 2 * groups
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, in_channels, 6, 6), "float32"))
    if weight is None:
        w = relax.Var("w", relax.TensorType((CHANNELS, 2, 3, 3), "float32"))
        params = [x, w]
    else:
        w, params = relax.const(weight), [x]
    stats = [relax.const(t) for t in bn_params(CHANNELS, 7)]
    with bb.function("main", params):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, w, groups=groups))
            bn_input = conv
            if bias is not None:
                shaped = {
                    "reshape": lambda: bb.emit(relax.op.reshape(relax.const(bias), (1, -1, 1, 1))),
                    "const4d": lambda: relax.const(bias.reshape(1, -1, 1, 1)),
                    "const3d": lambda: relax.const(bias.reshape(-1, 1, 1)),
                }[bias_form]()
                pair = (shaped, conv) if bias_first else (conv, shaped)
                bn_input = bb.emit(relax.op.add(*pair))
            bn = bb.emit(
                relax.op.nn.batch_norm(
                    bn_input,
                    *stats,
                    axis=axis,
                    epsilon=epsilon,
                    center=center,
                    scale=scale,
                    training=training,
                )
            )
            outputs = [bb.emit(relax.TupleGetItem(bn, 0))]
            if extra_use is not None:
                extra = {"conv": conv, "add": bn_input, "stats": bn}[extra_use]
                outputs.append(relax.TupleGetItem(extra, 1) if extra_use == "stats" else extra)
            out = bb.emit_output(relax.Tuple(outputs) if len(outputs) > 1 else outputs[0])
        bb.emit_func_output(out)
    return bb.get(), w


@pytest.mark.parametrize("bias_form", ["reshape", "const4d", "const3d"])
@pytest.mark.parametrize("bias_first", [False, True])
def test_every_bias_form_folds_to_the_same_module(bias_form, bias_first):
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((CHANNELS, 2, 3, 3)).astype("float32")
    bias = rng.standard_normal(CHANNELS).astype("float32")
    new_weight, new_bias = _folded(weight, *bn_params(CHANNELS, 7), bias=bias)

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 2, 6, 6), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(new_weight))
                y = R.add(conv, R.const(new_bias))
                R.output(y)
            return y

    before, _ = _chain(weight, bias, bias_form, bias_first)
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), Expected)


_WEIGHT = np.random.default_rng(5).standard_normal((CHANNELS, 2, 3, 3)).astype("float32")
_BIAS = np.arange(CHANNELS, dtype="float32")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(extra_use="conv"), id="conv-output-used-twice"),
        pytest.param(dict(bias=_BIAS, extra_use="conv"), id="conv-output-used-twice-bias"),
        pytest.param(dict(bias=_BIAS, extra_use="add"), id="add-output-used-twice"),
        pytest.param(dict(extra_use="stats"), id="batch-norm-stats-used"),
        pytest.param(dict(weight=None), id="weight-not-constant"),
        pytest.param(dict(training=True), id="training-mode"),
        pytest.param(dict(axis=3), id="batch-norm-over-width"),  # the output is 1x4x4x4
    ],
)
def test_left_alone(kwargs):
    before, _ = _chain(**{"weight": _WEIGHT, **kwargs})
    after, report = fold_batchnorm(before)
    assert after.same_as(before)
    assert report.folded == []


def test_bias_that_is_not_per_channel_is_left_alone():
    gamma, beta, mean, var = bn_params(CHANNELS, 0)
    full_bias = np.ones((1, CHANNELS, 4, 4), "float32")

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 6, 6), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(_WEIGHT))
                biased = R.add(conv, R.const(full_bias))
                bn = R.nn.batch_norm(
                    biased,
                    R.const(gamma),
                    R.const(beta),
                    R.const(mean),
                    R.const(var),
                    axis=1,
                    training=False,
                )
                y = bn[0]
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(FoldBatchNorm()(Before), Before)


@pytest.mark.parametrize("axis", [3, 1])  # the channel axis; the height axis (also of size 4)
def test_nhwc_conv_is_left_alone(axis):
    gamma, beta, mean, var = bn_params(CHANNELS, 0)
    hwio = _WEIGHT.transpose(2, 3, 1, 0).copy()

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 6, 6, 2), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(hwio), data_layout="NHWC", kernel_layout="HWIO")
                bn = R.nn.batch_norm(
                    conv,
                    R.const(gamma),
                    R.const(beta),
                    R.const(mean),
                    R.const(var),
                    axis=axis,
                    training=False,
                )
                y = bn[0]
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(FoldBatchNorm()(Before), Before)


def test_names_follow_the_folded_weight():
    before, weight = _chain(_WEIGHT, _BIAS)
    names = {weight: "layer1.conv.weight"}
    after, report = fold_batchnorm(before, names)
    (conv,) = calls(after, "relax.nn.conv2d")
    new_weight = conv.args[1]
    assert not new_weight.same_as(weight)
    assert report.weight_names[new_weight] == "layer1.conv.weight"
    assert report.weight_names[weight] == "layer1.conv.weight"
    assert names == {weight: "layer1.conv.weight"}  # the caller's dict is not modified
    assert report.folded == ["layer1.conv.weight"]


@given(
    groups=st.integers(1, 2),
    bias_form=st.sampled_from([None, "reshape", "const4d", "const3d"]),
    bias_first=st.booleans(),
    center=st.booleans(),
    scale=st.booleans(),
    epsilon=st.sampled_from([1e-5, 1e-3, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_folded_conv_computes_the_batch_norm(
    groups, bias_form, bias_first, center, scale, epsilon, seed
):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((CHANNELS, 2, 3, 3)).astype("float32")
    bias = rng.standard_normal(CHANNELS).astype("float32") if bias_form else None
    before, _ = _chain(weight, bias, bias_form, bias_first, groups, epsilon, center, scale)
    after = FoldBatchNorm()(before)
    assert not calls(after, "relax.nn.batch_norm")
    (conv,) = calls(after, "relax.nn.conv2d")
    (add,) = calls(after, "relax.add")
    new_weight, new_bias = (
        torch.from_numpy(c.value.numpy()).double() for c in (conv.args[1], add.args[1])
    )

    x = torch.from_numpy(rng.standard_normal((1, 2 * groups, 6, 6)))
    gamma, beta, mean, var = (torch.from_numpy(t).double() for t in bn_params(CHANNELS, 7))
    reference = F.conv2d(x, torch.from_numpy(weight).double(), groups=groups)
    if bias is not None:
        reference = reference + torch.from_numpy(bias).double()[:, None, None]
    reference = F.batch_norm(
        reference, mean, var, gamma if scale else None, beta if center else None, eps=epsilon
    )
    folded = F.conv2d(x, new_weight, groups=groups) + new_bias
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)
