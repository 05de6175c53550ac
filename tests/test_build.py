"""compile_model with the hand schedules: NHWC planning, fusion, every kernel scheduled, exact."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm

from tvm_structconv import ops
from tvm_structconv.build import compile_model, prepare_module, scheduled_pipeline
from tvm_structconv.frontend import load_model
from tvm_structconv.manifest import Manifest
from tvm_structconv.schedules.packing import conv_layout
from tvm_structconv.structure import Structure

HOST = tvm.target.Target(
    {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
)


class TinyNet(nn.Module):
    """Stem, max-pool, a residual block, depthwise + ReLU6 + pointwise, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv1 = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16), nn.ReLU6())
        self.pointwise = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = torch.relu(self.conv2(self.conv1(x)) + x)
        x = self.pointwise(self.depthwise(x))
        return self.fc(x.mean(dim=(2, 3)))


STRUCTURES = {"conv1.0.weight": Structure(16, 3, 16, 2), "conv2.0.weight": Structure(16, 3, 16, 2)}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        for name, parameter in model.named_parameters():
            if name in STRUCTURES:
                parameter.copy_(
                    torch.from_numpy(STRUCTURES[name].project(parameter.double().numpy()))
                )
    x = torch.randn(1, 3, 32, 32)
    return model, x, load_model(model, x, Manifest.from_structures(STRUCTURES))


@pytest.mark.parametrize("structured", [False, True])
def test_scheduled_builds_match_torch(tiny, structured):
    model, x, imported = tiny
    compiled = compile_model(imported, HOST, structured=structured)
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(compiled.run(x.numpy())[0], expected, rtol=1e-4, atol=1e-4)
    if structured:
        assert sorted(layer.name for layer in compiled.report.rewritten) == sorted(STRUCTURES)


def test_unscheduled_build_still_matches(tiny):
    model, x, imported = tiny
    compiled = compile_model(imported, HOST, structured=True, schedules=False)
    np.testing.assert_allclose(
        compiled.run(x.numpy())[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-4
    )


def test_epilogues_fuse_and_every_kernel_is_scheduled(tiny):
    _, _, imported = tiny
    mod = prepare_module(imported, structured=True, layout=conv_layout(HOST)).mod
    lowered = scheduled_pipeline(HOST)(mod)
    kernels = {
        gv.name_hint: f for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    }
    assert all(f.attrs.get("tirx.is_scheduled") for f in kernels.values()), sorted(kernels)
    convs = sorted(name for name in kernels if ops.SCHEDULE_RULE in name)
    assert len(convs) == 6  # five convs and the classifier (a Linear layer as a 1x1 conv)
    # stem: bias + ReLU; block: bias + ReLU, then bias + residual add + ReLU; ReLU6 as max/min
    assert any(name.endswith("add_relu") for name in convs)
    assert any("add" in name and name.count("add") >= 2 and "relu" in name for name in convs)
    assert any("maximum" in name and "minimum" in name for name in convs)
    # activations stay NHWC between convs: transposes only at the input and before flatten
    assert sum("transpose" in name for name in kernels) <= 2


def test_flatten_after_a_conv_reads_nchw_order():
    """conv -> Flatten -> Linear: NHWC planning must transpose back before the flatten."""
    from small_nets import structured_net

    model, x, manifest = structured_net()
    compiled = compile_model(load_model(model, x, manifest), HOST)
    np.testing.assert_allclose(
        compiled.run(x.numpy())[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-5
    )
