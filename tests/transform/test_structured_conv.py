"""The structured-conv rewrite: IR against an expected module, numerics against torch, errors."""

import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm
from hypothesis import given
from hypothesis import strategies as st
from tvm import relax

from strategies import structures
from tvm_structconv import ops
from tvm_structconv.build import compile_model, prepare_module
from tvm_structconv.frontend import load_model
from tvm_structconv.manifest import LayerSpec, Manifest, ManifestError
from tvm_structconv.structure import Structure
from tvm_structconv.transform.structured_conv import (
    RewriteStructuredConv,
    StructureMismatchError,
    default_tolerance,
    rewrite_structured_conv,
)

TARGET = tvm.target.Target({"kind": "llvm"})


def conv_module(weight: np.ndarray, **attrs) -> tuple[tvm.IRModule, tvm.ir.Constant]:
    x = relax.Var("x", relax.TensorType((1, weight.shape[1] * attrs.get("groups", 1), 9, 9), "float32"))
    constant = relax.const(weight)
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(x, constant, **attrs))
        builder.emit_func_output(out)
    return builder.get(), constant


def test_ir_matches_expected_module():
    structure = Structure(8, 3, 4, 2, groups=2)
    alpha = np.random.default_rng(0).standard_normal(structure.alpha_shape(6)).astype("float32")
    weight = structure.compose(alpha.astype(np.float64)).astype("float32")
    mod, constant = conv_module(weight, strides=2, padding=(1, 0, 2, 1), dilation=1, groups=2)
    manifest = Manifest({"w": LayerSpec(4, (2, 2))})
    actual, report = rewrite_structured_conv(mod, manifest, {constant: "w"})

    x = relax.Var("x", relax.TensorType((1, 8, 9, 9), "float32"))
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            compute = functools.partial(ops.structured_conv2d, structure=structure, strides=[2, 2],
                                        padding=[1, 0, 2, 1], dilation=[1, 1], out_dtype="float32")
            call = builder.call_te(compute, x, relax.const(structure.decompose(weight.astype(np.float64)).astype("float32")),
                                   primfunc_name_hint="structured_conv2d")
            out = builder.emit_output(call)
        builder.emit_func_output(out)
    expected = builder.get()
    tvm.ir.assert_structural_equal(actual, expected, map_free_vars=True)
    tvm.ir.assert_structural_equal(RewriteStructuredConv(manifest, {constant: "w"})(mod),
                                   expected, map_free_vars=True)  # the pass form
    assert [layer.name for layer in report.rewritten] == ["w"]
    layer = report.layers[0]
    assert (layer.macs_before, layer.macs_after) == (6 * 4 * 9 * 5 * 4, 6 * 2 * 4 * 5 * 4)  # 5x4 output


def test_unrecorded_and_unsupported_convs_are_reported_and_left_alone():
    weight = np.random.default_rng(1).standard_normal((4, 4, 3, 3)).astype("float32")
    mod, constant = conv_module(weight, padding=1)
    after, report = rewrite_structured_conv(mod, Manifest({}), {constant: "layer.weight"})
    assert after.same_as(mod)
    (layer,) = report.layers
    assert (layer.name, layer.rewritten, layer.reason) == ("layer.weight", False, "no recorded structure")

    mixed_weight = Structure(4, 3, 2, 2).compose(np.ones((4, 2, 2, 2))).astype("float32")
    x = relax.Var("x", relax.TensorType((1, 4, 9, 9), "float32"))
    constant = relax.const(mixed_weight)
    builder = relax.BlockBuilder()
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(x, constant, out_layout="NHWC"))
        builder.emit_func_output(out)
    mixed = builder.get()
    after, report = rewrite_structured_conv(mixed, Manifest({"w": LayerSpec(2, (2, 2))}),
                                            {constant: "w"})
    assert after.same_as(mixed)
    assert ("layout NCHW/OIHW/NHWC is not NCHW/OIHW/NCHW or NHWC/*/NHWC"
            in report.layers[0].reason)


def test_weight_off_its_structure_is_refused_with_name_and_residual():
    structure = Structure(4, 3, 2, 2)
    weight = structure.compose(np.ones((4, 2, 2, 2)))
    weight[0, 0, 0, 0] += 0.01
    mod, constant = conv_module(weight.astype("float32"), padding=1)
    rewrite = RewriteStructuredConv(Manifest({"blocks.3.conv.weight": LayerSpec(2, (2, 2))}),
                                    {constant: "blocks.3.conv.weight"})  # raises as a pass too
    with pytest.raises(StructureMismatchError, match=r"layer 'blocks.3.conv.weight'.*residual \d\.\d+e-0\d > tolerance 1.2e-05"):
        rewrite(mod)


def test_manifest_that_does_not_fit_the_conv_is_an_error():
    weight = np.ones((4, 4, 3, 3), "float32")
    mod, constant = conv_module(weight)
    rewrite = RewriteStructuredConv(Manifest({"w": LayerSpec(8, (2, 2))}, "m.json"), {constant: "w"})
    with pytest.raises(ManifestError, match=r"m.json: 'w' does not fit its weight of shape \(4, 4, 3, 3\)"):
        rewrite(mod)


def test_default_tolerance_scales_with_dtype():
    assert default_tolerance("float32") == pytest.approx(1.1920929e-05)
    assert default_tolerance("float64") < 1e-13


# ------------------------------------------------------------------ numerics through frontends
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
    """Every kind of layer the pass handles: grouped, depthwise, strided, dilated, 1x1, BN, Linear."""

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
    weight = structure.compose(np.random.default_rng(2).standard_normal((5, 2, 2, 2))).astype("float32")
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
    expected = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compiled = compile_model(load_model(path), TARGET)
    assert len(compiled.report.rewritten) == 1
    np.testing.assert_allclose(compiled.run(x)[0], expected, rtol=1e-4, atol=1e-5)


@given(structures(max_channels=4, max_kernel=3), st.integers(1, 2), st.integers(0, 2),
       st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_rewritten_conv_equals_torch_over_random_shapes(structure, stride, padding, dilation, seed):
    generator = torch.Generator().manual_seed(seed)
    out_channels = 2 * structure.groups
    conv = nn.Conv2d(structure.in_channels, out_channels, structure.kernel_size, stride, padding,
                     dilation, structure.groups)
    structured_copy(conv, {"weight": structure})
    x = torch.randn((1, structure.in_channels, 7, 8), generator=generator)
    imported = load_model(nn.Sequential(conv), x, Manifest({"0.weight": LayerSpec.of(structure)}))
    prepared = prepare_module(imported)
    assert len(prepared.report.rewritten) == (0 if structure.is_trivial else 1)
    executable = tvm.compile(prepared.mod, target=TARGET)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
    np.testing.assert_allclose(got, conv(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_pt2_manifest_naming_a_missing_weight_is_an_error(small_net):
    model, x = small_net
    imported = load_model(model, x, Manifest({"nope.weight": LayerSpec(1, (1, 1))}, "m.json"))
    with pytest.raises(ManifestError, match="m.json: 'nope.weight' names no weight of the model"):
        prepare_module(imported)
