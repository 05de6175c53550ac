"""Linear layers on CPU builds: every one runs as a packed 1x1 NHWC conv (the register-tiled
GEMM of the conv schedule, its bias and activation fused), original and structured, for any
input rank, compiled with the scheduled x86 pipeline and checked against torch."""

import numpy as np
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.build import compile_model
from tvm_structconv.frontend import load_model
from tvm_structconv.manifest import Manifest
from tvm_structconv.structure import Structure


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last axis of an input of any rank (ConvNeXt's block)."""

    def __init__(self, features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


@settings(max_examples=8, deadline=None)
@given(
    leading=st.sampled_from([(1,), (3,), (2, 5), (1, 3, 7), (2, 2, 3)]),
    features=st.integers(3, 40),
    hidden=st.integers(1, 70),
    out=st.integers(1, 20),
    structured=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_layers_match_torch(leading, features, hidden, out, structured, seed):
    torch.manual_seed(seed)
    model = Mlp(features, hidden, out).eval()
    structures = {}
    if structured and features > 1:
        structures["fc1.weight"] = Structure(features, 1, max(features // 2, 1), 1)
        with torch.no_grad():
            weight = model.fc1.weight.double().numpy()
            model.fc1.weight.copy_(torch.from_numpy(structures["fc1.weight"].project(weight)))
    x = torch.randn(*leading, features)
    imported = load_model(model, x, Manifest.from_structures(structures))
    compiled = compile_model(imported, "x86", structured=bool(structures), tuning_logs=False)
    if structures:
        assert [layer.name for layer in compiled.report.rewritten] == ["fc1.weight"]
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(compiled.run(x.numpy())[0], expected, rtol=1e-4, atol=1e-5)


def test_every_linear_layer_is_a_scheduled_conv():
    from tvm_structconv.build import prepare_module
    from tvm_structconv.schedules.packing import conv_layout
    from tvm_structconv.targets import make_target

    target = make_target("x86")
    model = Mlp(16, 48, 10).eval()
    imported = load_model(model, torch.randn(1, 4, 4, 16), Manifest({}))
    prepared = prepare_module(imported, structured=False, layout=conv_layout(target))
    text = prepared.mod.script()
    assert "R.matmul" not in text and text.count("structured_conv2d") >= 2
