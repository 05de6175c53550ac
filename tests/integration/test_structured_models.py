"""Structured models end to end: small nets through torch.export, ONNX and .pt2, compiled and
run against torch and onnxruntime, and random structured convs against torch.

The IR tests of the rewrite are in ``tests/transform/test_structured_conv.py``.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm
from hypothesis import given
from hypothesis import strategies as st
from tvm import relax

from tvm_structconv.build import compile_model, prepare_module
from tvm_structconv.frontend import load_model
from tvm_structconv.manifest import LayerSpec, Manifest, ManifestError
from tvm_structconv.structure import Structure

from strategies import structures

TARGET = tvm.target.Target({"kind": "llvm"})


def structured_copy(model: nn.Module, structures: dict) -> nn.Module:
    """Project the named weights of ``model`` onto their structures (in place)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, structure in structures.items():
            weight = parameters[name]
            weight.copy_(torch.from_numpy(structure.project(weight.double().numpy())).float())
    return model.eval()


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(0.1 * torch.randn(size, generator=generator))


class SmallNet(nn.Module):
    """Every layer kind the pass handles: grouped, depthwise, strided, dilated, 1x1, BN, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(6, 12, 3, padding=1, bias=True)
        self.stem_bn = nn.BatchNorm2d(12)
        self.grouped = nn.Conv2d(12, 12, (3, 5), stride=2, padding=(1, 2), groups=3, bias=False)
        self.grouped_bn = nn.BatchNorm2d(12)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12, bias=False)
        self.pointwise = nn.Conv2d(12, 16, 1)
        self.fc = nn.Linear(16, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.grouped_bn(self.grouped(x)))
        x = self.pointwise(self.depthwise(x))
        return self.fc(x.mean(dim=(2, 3)))


SMALL_NET_STRUCTURES = {
    "stem.weight": Structure(6, 3, 3, 2),
    "grouped.weight": Structure(12, (3, 5), 6, (2, 3), groups=3),
    "depthwise.weight": Structure(12, 3, 12, 2, groups=12),
    "pointwise.weight": Structure(12, 1, 4, 1),
    "fc.weight": Structure(16, 1, 8, 1),
}


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    model = SmallNet()
    randomize_batchnorm(model, 1)
    return structured_copy(model, SMALL_NET_STRUCTURES), torch.randn(2, 6, 11, 13)


def run(compiled, x: torch.Tensor) -> np.ndarray:
    return compiled.run(x.numpy())[0]


def test_small_net_through_torch_export_matches_torch(small_net):
    model, x = small_net
    imported = load_model(model, x, Manifest.from_structures(SMALL_NET_STRUCTURES))
    compiled = compile_model(imported, TARGET)
    assert sorted(layer.name for layer in compiled.report.rewritten) == sorted(SMALL_NET_STRUCTURES)
    assert len(compiled.folded) == 2
    np.testing.assert_allclose(run(compiled, x), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_small_net_through_onnx_and_pt2_match_their_runtimes(small_net, tmp_path):
    import onnxruntime

    from tvm_structconv.export import export

    model, x = small_net
    manifest = Manifest.from_structures(SMALL_NET_STRUCTURES)
    onnx_path, pt2_path = tmp_path / "net.onnx", tmp_path / "net.pt2"
    export(model, onnx_path, x, manifest)
    export(model, pt2_path, x, manifest)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    imported = load_model(onnx_path)
    assert imported.manifest_origin == "ONNX metadata"
    compiled = compile_model(imported, TARGET)
    assert len(compiled.report.rewritten) == len(SMALL_NET_STRUCTURES)
    np.testing.assert_allclose(run(compiled, x), expected, rtol=1e-4, atol=1e-5)

    imported = load_model(pt2_path)
    assert imported.manifest_origin.startswith("sidecar")
    compiled = compile_model(imported, TARGET)
    assert len(compiled.report.rewritten) == len(SMALL_NET_STRUCTURES)
    np.testing.assert_allclose(run(compiled, x), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_names_lost_to_constant_folding_are_matched_by_value(small_net, tmp_path):
    import onnx
    import onnxruntime

    model, x = small_net
    path = tmp_path / "folded.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=True)
    proto = onnx.load(path)
    Manifest.from_structures(SMALL_NET_STRUCTURES).embed_onnx(proto)
    onnx.save(proto, path)
    compiled = compile_model(load_model(path), TARGET)
    assert any("matched by value" in note for note in compiled.notes)
    by_value = [layer for layer in compiled.report.rewritten if layer.reason == "matched by value"]
    assert by_value, compiled.report.format()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(run(compiled, x), expected, rtol=1e-4, atol=1e-5)


def test_asymmetric_padding_from_onnx(tmp_path):
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    structure = Structure(4, 3, 2, 2)
    weight = structure.compose(np.random.default_rng(2).standard_normal((5, 2, 2, 2))).astype(
        "float32"
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight"], ["y"], pads=[0, 2, 1, 0], strides=[2, 1])],
        "asym",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "conv.weight")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    Manifest({"conv.weight": LayerSpec(2, (2, 2))}).embed_onnx(proto)
    path = tmp_path / "asym.onnx"
    onnx.save(proto, path)
    x = np.random.default_rng(3).standard_normal((1, 4, 8, 7)).astype("float32")
    expected = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    compiled = compile_model(load_model(path), TARGET)
    assert len(compiled.report.rewritten) == 1
    np.testing.assert_allclose(compiled.run(x)[0], expected, rtol=1e-4, atol=1e-5)


@given(
    structures(max_channels=4, max_kernel=3),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(1, 2),
    st.integers(0, 2**31 - 1),
)
def test_rewritten_conv_equals_torch_over_random_shapes(structure, stride, padding, dilation, seed):
    generator = torch.Generator().manual_seed(seed)
    out_channels = 2 * structure.groups
    conv = nn.Conv2d(
        structure.in_channels,
        out_channels,
        structure.kernel_size,
        stride,
        padding,
        dilation,
        structure.groups,
    )
    structured_copy(conv, {"weight": structure})
    x = torch.randn((1, structure.in_channels, 7, 8), generator=generator)
    imported = load_model(nn.Sequential(conv), x, Manifest({"0.weight": LayerSpec.of(structure)}))
    prepared = prepare_module(imported)
    assert len(prepared.report.rewritten) == (0 if structure.is_trivial else 1)
    executable = tvm.compile(prepared.mod, target=TARGET)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))[
        0
    ].numpy()
    np.testing.assert_allclose(got, conv(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_pt2_manifest_naming_a_missing_weight_is_an_error(small_net):
    model, x = small_net
    imported = load_model(model, x, Manifest({"nope.weight": LayerSpec(1, (1, 1))}, "m.json"))
    with pytest.raises(ManifestError, match="m.json: 'nope.weight' names no weight of the model"):
        prepare_module(imported)
