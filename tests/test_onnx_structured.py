"""ONNX rewrite to plain pool + small conv ops: onnxruntime output unchanged, ops replaced."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn as nn

from tvm_structconv.export import export
from tvm_structconv.manifest import LayerSpec, Manifest
from tvm_structconv.onnx_structured import rewrite_structured_onnx
from tvm_structconv.structure import Structure

STRUCTURES = {
    "0.weight": Structure(6, 3, 4, 2),  # channel window 3, 2x2 spatial
    "1.weight": Structure(12, (3, 5), 6, (2, 3), groups=3),  # grouped with channel window
    "2.weight": Structure(12, 3, 12, 2, groups=12),  # depthwise, dilated
    "3.weight": Structure(12, 1, 4, 1),  # 1x1
    "6.weight": Structure(16, 1, 8, 1),  # linear
}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(6, 12, 3, padding=1),
        nn.Conv2d(12, 12, (3, 5), stride=2, padding=(1, 2), groups=3),
        nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12),
        nn.Conv2d(12, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()
    with torch.no_grad():
        for name, structure in STRUCTURES.items():
            weight = dict(model.named_parameters())[name]
            weight.copy_(torch.from_numpy(structure.project(weight.double().numpy())))
    x = torch.randn(2, 6, 11, 13)
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    export(model, path, x, Manifest.from_structures(STRUCTURES))
    return onnx.load(path), x.numpy()


def test_rewritten_model_computes_the_same(exported):
    model, x = exported
    rewritten, names = rewrite_structured_onnx(model, Manifest.from_onnx(model))
    assert sorted(names) == sorted(STRUCTURES)
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops.count("AveragePool") == len(STRUCTURES)
    assert ops.count("Conv") == 4 and ops.count("Gemm") == 1
    np.testing.assert_allclose(run(rewritten, x), run(model, x), rtol=1e-4, atol=1e-5)
    # the reduced convs carry alpha, the small kernel
    shapes = {tensor.name: tuple(tensor.dims) for tensor in rewritten.graph.initializer}
    assert shapes["1.weight/alpha"] == (12, 2, 2, 3)


def test_only_manifest_layers_change(exported):
    model, x = exported
    rewritten, names = rewrite_structured_onnx(model, Manifest({"3.weight": LayerSpec(4, (1, 1))}))
    assert names == ["3.weight"]
    assert [n.op_type for n in rewritten.graph.node].count("AveragePool") == 1
    np.testing.assert_allclose(run(rewritten, x), run(model, x), rtol=1e-4, atol=1e-5)


def test_weight_off_its_structure_is_refused(exported):
    model, _ = exported
    with pytest.raises(ValueError, match=r"layer '0.weight': weights do not satisfy .* residual"):
        rewrite_structured_onnx(model, Manifest({"0.weight": LayerSpec(2, (1, 1))}))
