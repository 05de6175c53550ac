"""FoldBatchNorm end to end: models from torch.export and ONNX, folded, compiled and run
against torch and onnxruntime. The IR tests of the pass are in ``tests/transform``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm
from tvm import relax

from tvm_structconv.transform import fold_batchnorm

from relax_modules import bn_params, calls


def _bn(channels: int, seed: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        for tensor, value in zip(
            (bn.weight, bn.bias, bn.running_mean, bn.running_var), bn_params(channels, seed)
        ):
            tensor.copy_(torch.from_numpy(value))
    return bn


MODELS = {
    "conv-bn": lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8, 0)),
    "conv-bias-bn": lambda: nn.Sequential(nn.Conv2d(3, 8, 3), _bn(8, 1)),
    "grouped-stride2-relu": lambda: nn.Sequential(
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), _bn(8, 2), nn.ReLU()
    ),
    "depthwise-relu-conv-bn": lambda: nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
        _bn(4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 8, 1),
        _bn(8, 4),
    ),
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
    constants = {
        var: relax.const(value.numpy())
        for var, value in zip(main.params[num_inputs:], params["main"])
    }
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
    assert not calls(folded, "relax.nn.batch_norm")
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert report.folded == [f"{name}.weight" for name in convs]
    assert [
        report.weight_names[conv.args[1]] for conv in calls(folded, "relax.nn.conv2d")
    ] == report.folded
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(_run(folded, x.numpy()), expected, rtol=1e-4, atol=1e-4)


def test_onnx_model_matches_onnxruntime_after_folding(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from tvm.relax.frontend.onnx import from_onnx

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        _bn(8, 5),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, bias=False),
        _bn(8, 6),
    ).eval()
    x = torch.randn(1, 3, 10, 10)
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=False)
        mod = from_onnx(onnx.load(path), keep_params_in_input=True)  # warns: input.1 -> input_1
    mod, names = _bind(mod, str)

    folded, report = fold_batchnorm(mod, names)
    assert not calls(folded, "relax.nn.batch_norm")
    assert report.folded == ["0.weight", "3.weight"]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(_run(folded, x.numpy()), expected, rtol=1e-4, atol=1e-4)
