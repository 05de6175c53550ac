"""The frontend binds each weight in its own dtype: a float64 ONNX model's weights stay
float64 and an int64 weight keeps values beyond int32 (``relax.const`` alone made them
float32 and int32). TVM's torch importer computes conv2d and linear in float32, so a float64
(or float16) model through ``torch.export`` is refused, naming the dtype, instead of coming
back rounded."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm
from tvm import relax

from tvm_structconv.export import export
from tvm_structconv.frontend import FrontendError, load_model

from small_nets import structured_net


def test_a_float64_onnx_model_keeps_float64_weights_and_input(tmp_path):
    model, x, manifest = structured_net(dtype=torch.float64)
    path = tmp_path / "net.onnx"
    export(model, path, x, manifest)
    imported = load_model(path)
    weights = imported.weights()
    assert set(manifest.layers) < set(weights)
    assert {str(array.dtype) for array, _ in weights.values()} == {"float64"}
    for name, parameter in model.state_dict().items():
        if name in weights:  # bound as they are: not rounded on the way
            np.testing.assert_array_equal(weights[name][0], parameter.numpy())
    assert [spec.dtype for spec in imported.inputs] == ["float64"]


class Offset(nn.Module):
    """``x + offset`` with an int64 parameter beyond int32."""

    def __init__(self) -> None:
        super().__init__()
        offset = torch.arange(6, dtype=torch.int64).reshape(2, 3) + 2**40
        self.offset = nn.Parameter(offset, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


def test_an_int64_weight_keeps_values_beyond_int32():
    model, x = Offset(), torch.full((2, 3), 2**33, dtype=torch.int64)
    imported = load_model(model, x)
    ((constant, name),) = imported.weight_names.items()
    assert name == "offset" and constant.value.numpy().dtype == np.int64
    np.testing.assert_array_equal(constant.value.numpy(), model.offset.numpy())
    executable = tvm.compile(imported.mod, target=tvm.target.Target({"kind": "llvm"}))
    (got,) = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
    np.testing.assert_array_equal(got.numpy(), model(x).numpy())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_torch_export_of_a_float64_or_float16_model_is_refused(dtype, bias):
    """With a bias TVM's importer fails on the float32 conv plus the bias; without one it
    would return the conv in float32: both refused before the importer runs."""
    model = nn.Sequential(nn.Conv2d(4, 8, 3, bias=bias), nn.ReLU()).to(dtype).eval()
    x = torch.randn(1, 4, 8, 8, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    message = f"Sequential has {name} inputs or weights; TVM's torch importer computes conv2d"
    with pytest.raises(FrontendError, match=message):
        load_model(model, x)
    with pytest.raises(FrontendError, match=f"ExportedProgram has {name}"):
        load_model(torch.export.export(model, (x,)))


def test_a_float64_net_through_pt2_is_refused(tmp_path):
    model, x, manifest = structured_net(dtype=torch.float64)
    path = tmp_path / "net.pt2"
    export(model, path, x, manifest)
    with pytest.raises(FrontendError, match=f"{path} has float64 inputs or weights"):
        load_model(path)
