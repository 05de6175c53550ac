"""FoldBatchNorm: IR vs TVMScript, chains it must leave alone, numerics vs torch and ORT."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import tvm
from hypothesis import given
from hypothesis import strategies as st
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_structconv.transform import FoldBatchNorm, fold_batchnorm

EPS = 1e-5
CHANNELS = 4


def _bn_params(channels: int, seed: int) -> list[np.ndarray]:
    """Non-trivial gamma, beta, moving mean and moving variance."""
    rng = np.random.default_rng(seed)
    gamma, beta, mean = (rng.uniform(-2, 2, channels).astype("float32") for _ in range(3))
    return [gamma, beta, mean, rng.uniform(0.2, 2, channels).astype("float32")]


def _folded(weight, gamma, beta, mean, var, bias=0.0):
    """Reference fold in float64 ``W s``, ``(b - mean) s + beta``; ``s = gamma / sqrt(v + eps)``."""
    gamma, beta, mean, var = (t.astype(np.float64) for t in (gamma, beta, mean, var))
    s = gamma / np.sqrt(var + EPS)
    shift = (bias - mean) * s + beta
    new_weight = weight.astype(np.float64) * s[:, None, None, None]
    return new_weight.astype("float32"), shift.reshape(1, -1, 1, 1).astype("float32")


def _calls(mod: tvm.IRModule, op_name: str) -> list[relax.Call]:
    """Every call of ``op_name`` in ``main``."""
    found = []
    relax.analysis.post_order_visit(
        mod["main"],
        lambda e: found.append(e) if isinstance(e, relax.Call) and e.op.name == op_name else None,
    )
    return found


# ------------------------------------------------------------------------- IR vs TVMScript
def test_conv_bn_folds_into_conv_add():
    weight = np.random.default_rng(0).standard_normal((CHANNELS, 3, 3, 3)).astype("float32")
    gamma, beta, mean, var = _bn_params(CHANNELS, 1)
    new_weight, new_bias = _folded(weight, gamma, beta, mean, var)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 6, 6), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(weight))
                bn = R.nn.batch_norm(conv, R.const(gamma), R.const(beta), R.const(mean),
                                     R.const(var), axis=1, epsilon=EPS, training=False)
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
    gamma, beta, mean, var = _bn_params(CHANNELS, 3)
    new_weight, new_bias = _folded(weight, gamma, beta, mean, var, bias=conv_bias)

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 3, 3), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(weight), strides=[2, 2])
                bias = R.reshape(R.const(conv_bias), R.shape([1, 4, 1, 1]))
                biased = R.add(conv, bias)
                bn = R.nn.batch_norm(biased, R.const(gamma), R.const(beta), R.const(mean),
                                     R.const(var), axis=1, epsilon=EPS, training=False)
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
    stats = [relax.const(t) for t in _bn_params(CHANNELS, 7)]
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
            bn = bb.emit(relax.op.nn.batch_norm(bn_input, *stats, axis=axis, epsilon=epsilon,
                                                center=center, scale=scale, training=training))
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
    new_weight, new_bias = _folded(weight, *_bn_params(CHANNELS, 7), bias=bias)

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
    gamma, beta, mean, var = _bn_params(CHANNELS, 0)
    full_bias = np.ones((1, CHANNELS, 4, 4), "float32")

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 6, 6), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(_WEIGHT))
                biased = R.add(conv, R.const(full_bias))
                bn = R.nn.batch_norm(biased, R.const(gamma), R.const(beta), R.const(mean),
                                     R.const(var), axis=1, training=False)
                y = bn[0]
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(FoldBatchNorm()(Before), Before)


@pytest.mark.parametrize("axis", [3, 1])  # the channel axis; the height axis (also of size 4)
def test_nhwc_conv_is_left_alone(axis):
    gamma, beta, mean, var = _bn_params(CHANNELS, 0)
    hwio = _WEIGHT.transpose(2, 3, 1, 0).copy()

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 6, 6, 2), "float32")) -> R.Tensor((1, 4, 4, 4), "float32"):
            with R.dataflow():
                conv = R.nn.conv2d(x, R.const(hwio),
                                   data_layout="NHWC", kernel_layout="HWIO")
                bn = R.nn.batch_norm(conv, R.const(gamma), R.const(beta), R.const(mean),
                                     R.const(var), axis=axis, training=False)
                y = bn[0]
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(FoldBatchNorm()(Before), Before)


def test_names_follow_the_folded_weight():
    before, weight = _chain(_WEIGHT, _BIAS)
    names = {weight: "layer1.conv.weight"}
    after, report = fold_batchnorm(before, names)
    (conv,) = _calls(after, "relax.nn.conv2d")
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
def test_folded_conv_computes_the_batch_norm(groups, bias_form, bias_first, center, scale,
                                             epsilon, seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((CHANNELS, 2, 3, 3)).astype("float32")
    bias = rng.standard_normal(CHANNELS).astype("float32") if bias_form else None
    before, _ = _chain(weight, bias, bias_form, bias_first, groups, epsilon, center, scale)
    after = FoldBatchNorm()(before)
    assert not _calls(after, "relax.nn.batch_norm")
    (conv,) = _calls(after, "relax.nn.conv2d")
    (add,) = _calls(after, "relax.add")
    new_weight, new_bias = (torch.from_numpy(c.value.numpy()).double()
                            for c in (conv.args[1], add.args[1]))

    x = torch.from_numpy(rng.standard_normal((1, 2 * groups, 6, 6)))
    gamma, beta, mean, var = (torch.from_numpy(t).double() for t in _bn_params(CHANNELS, 7))
    reference = F.conv2d(x, torch.from_numpy(weight).double(), groups=groups)
    if bias is not None:
        reference = reference + torch.from_numpy(bias).double()[:, None, None]
    reference = F.batch_norm(reference, mean, var, gamma if scale else None,
                             beta if center else None, eps=epsilon)
    folded = F.conv2d(x, new_weight, groups=groups) + new_bias
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- real frontends
def _bn(channels: int, seed: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        for tensor, value in zip(
            (bn.weight, bn.bias, bn.running_mean, bn.running_var), _bn_params(channels, seed)
        ):
            tensor.copy_(torch.from_numpy(value))
    return bn


MODELS = {
    "conv-bn": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8, 0)),
    "conv-bias-bn": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), _bn(8, 1)),
    "grouped-stride2-relu": lambda: nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), _bn(8, 2), nn.ReLU()),
    "depthwise-relu-conv-bn": lambda: nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), _bn(4, 3), nn.ReLU(),
        nn.Conv2d(4, 8, 1), _bn(8, 4)),
}


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()


def _bind(mod: tvm.IRModule, name_of) -> tuple[tvm.IRModule, dict[relax.Expr, str]]:
    """Bind the detached parameters of ``main`` as constants; ``{constant: name_of(var name)}``."""
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    num_inputs = int(main.attrs["num_input"])
    constants = {var: relax.const(value.numpy())
                 for var, value in zip(main.params[num_inputs:], params["main"])}
    names = {constant: name_of(var.name) for var, constant in constants.items()}
    return relax.transform.BindParams("main", constants)(mod), names


@pytest.mark.parametrize("model_name", list(MODELS))
def test_torch_models_match_after_folding(model_name):
    torch.manual_seed(0)
    model = MODELS[model_name]().eval()
    x = torch.randn(1, model[0].in_channels, 8, 8)
    from tvm.relax.frontend.torch import from_exported_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,))
        mod = from_exported_program(program, keep_params_as_input=True)
    state_names = dict(program.graph_signature.inputs_to_parameters)
    mod, names = _bind(mod, lambda var_name: state_names[var_name])

    folded, report = fold_batchnorm(mod, names)
    assert not _calls(folded, "relax.nn.batch_norm")
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert report.folded == [f"{name}.weight" for name in convs]
    assert ([report.weight_names[conv.args[1]] for conv in _calls(folded, "relax.nn.conv2d")]
            == report.folded)
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(_run(folded, x.numpy()), expected, rtol=1e-4, atol=1e-4)


def test_onnx_model_matches_onnxruntime_after_folding(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from tvm.relax.frontend.onnx import from_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _bn(8, 5), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, bias=False), _bn(8, 6)).eval()
    x = torch.randn(1, 3, 10, 10)
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=False)
        mod = from_onnx(onnx.load(path), keep_params_in_input=True)  # warns: input.1 -> input_1
    mod, names = _bind(mod, str)

    folded, report = fold_batchnorm(mod, names)
    assert not _calls(folded, "relax.nn.batch_norm")
    assert report.folded == ["0.weight", "3.weight"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(_run(folded, x.numpy()), expected, rtol=1e-4, atol=1e-4)
