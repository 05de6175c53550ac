"""ONNX models with symbolic dims and shape arithmetic: bound, folded, compiled, checked
against onnxruntime."""

import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.build import compile_model, max_errors
from tvm_structconv.cli import main
from tvm_structconv.frontend import FrontendError, load_model
from tvm_structconv.onnx_static import InputShapeError, make_static, parse_input_shape


class ChunkNet(nn.Module):
    """A ShuffleNet-like block: chunk the channels (Shape/Gather/Div/Slice when exported),
    convolve one half, concatenate, shuffle the channels (reshape/transpose)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        left, right = x.chunk(2, dim=1)
        y = torch.cat([left, torch.relu(self.conv(right))], dim=1)
        b, c, h, w = y.shape
        y = y.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(y)


def _export(path, dynamic_axes):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ChunkNet().eval(),
            (torch.randn(1, 8, 8, 8),),
            path,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=dynamic_axes,
            do_constant_folding=False,
        )
    return path


@pytest.fixture(scope="module")
def symbolic_batch(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("onnx") / "batch.onnx", {"x": {0: "batch"}})


@pytest.fixture(scope="module")
def symbolic_all(tmp_path_factory):
    return _export(
        tmp_path_factory.mktemp("onnx") / "all.onnx", {"x": {0: "batch", 2: "height", 3: "width"}}
    )


def _onnxruntime(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_shape_arithmetic_is_folded_away(symbolic_batch):
    static = make_static(onnx.load(symbolic_batch))
    ops = {node.op_type for node in static.model.graph.node}
    assert static.folded > 0 and not ops & {"Shape", "Gather", "Div"}
    assert static.input_shapes == {"x": (1, 8, 8, 8)}
    script = load_model(symbolic_batch).mod["main"].script()
    assert "dynamic_strided_slice" not in script and "ndim=4" not in script


def test_a_symbolic_batch_binds_to_one_with_a_note(symbolic_batch):
    imported = load_model(symbolic_batch)
    assert [spec.shape for spec in imported.inputs] == [(1, 8, 8, 8)]
    assert imported.notes == [
        "input 'x': symbolic batch 'batch' bound to 1 (--input-shape x:Nx8x8x8 for another)"
    ]
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype("float32")
    got = compile_model(imported, "x86", structured=False, tuning_logs=False).run(x)
    assert max_errors(got, _onnxruntime(symbolic_batch, x))[1] < 1e-5


@settings(max_examples=4)
@given(batch=st.integers(1, 3), height=st.integers(3, 12), width=st.integers(3, 12))
def test_given_shapes_compile_exactly(symbolic_all, batch, height, width):
    shape = (batch, 8, height, width)
    imported = load_model(symbolic_all, input_shapes={"x": shape})
    assert imported.notes == [] and imported.inputs[0].shape == shape
    x = np.random.default_rng(batch).standard_normal(shape).astype("float32")
    got = compile_model(imported, "x86", structured=False, tuning_logs=False).run(x)
    assert max_errors(got, _onnxruntime(symbolic_all, x))[1] < 1e-5


@pytest.mark.parametrize(
    "shapes, message",
    [
        (
            None,
            "input 'x' has symbolic dims [batch, 8, height, width]; give its shape with "
            "--input-shape x:Nx8xNxN",
        ),
        (
            {"y": (1, 8, 8, 8)},
            "--input-shape names 'y', which is not an input of the model; its inputs: x",
        ),
        ({"x": (1, 8, 8)}, "input 'x' has 4 dims [batch, 8, height, width], --input-shape gives 3"),
        (
            {"x": (1, 3, 8, 8)},
            "input 'x' is [batch, 8, height, width]; --input-shape 1x3x8x8 differs at axis 1",
        ),
    ],
)
def test_shapes_that_do_not_fit_are_named(symbolic_all, shapes, message):
    with pytest.raises(FrontendError) as error:
        load_model(symbolic_all, input_shapes=shapes)
    assert str(error.value) == f"{symbolic_all}: {message}"


@pytest.mark.parametrize(
    "text, parsed",
    [("x:1x3x224x224", ("x", (1, 3, 224, 224))), ("input:0:2X3", ("input:0", (2, 3)))],
)
def test_parse_input_shape(text, parsed):
    assert parse_input_shape(text) == parsed


@pytest.mark.parametrize("text", ["x", "x:", ":1x2", "x:1x0", "x:axb", "x:1x-2"])
def test_parse_input_shape_refuses(text):
    with pytest.raises(InputShapeError, match="is not NAME:D1xD2x... with positive dims"):
        parse_input_shape(text)


def test_cli_verify_with_input_shapes(symbolic_all, capsys):
    assert main(["verify", str(symbolic_all), "--input-shape", "x:2x8x6x10"]) == 0
    assert "OK: both builds match onnxruntime" in capsys.readouterr().out


def test_cli_names_missing_shapes_in_one_line(symbolic_all, capsys):
    assert main(["compile", str(symbolic_all), "-o", "unused.so"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("structconv: error: ") and err.count("\n") == 1
    assert "--input-shape x:Nx8xNxN" in err
