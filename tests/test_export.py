"""export: ONNX runs in onnxruntime like torch and carries the manifest; .pt2 with a sidecar."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn as nn

from tvm_structconv.export import export, sidecar_path
from tvm_structconv.manifest import Manifest, ManifestError
from tvm_structconv.nn import structurize, to_ordinary
from tvm_structconv.plan import Plan

PLAN = Plan.parse("3x3:c=C/2,n=2,grouped=yes;linear:c=C/2")


def _structured_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    with torch.no_grad():
        for index in (1, 4):
            model[index].running_mean.uniform_(-1, 1)
            model[index].running_var.uniform_(0.5, 2)
    return structurize(model, PLAN)


def test_onnx_matches_torch_and_carries_the_manifest(tmp_path):
    model, manifest = _structured_model()
    model.train()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "model.onnx"
    export(model, path, x, manifest)
    assert model.training  # mode restored
    model.eval()

    proto = onnx.load(path)
    initializers = {tensor.name for tensor in proto.graph.initializer}
    assert set(manifest.layers) <= initializers
    assert Manifest.from_onnx(proto).to_dict() == manifest.to_dict()
    assert Manifest.from_onnx(path).layers == manifest.layers

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def test_onnx_of_a_directly_trained_model(tmp_path):
    model, manifest = _structured_model()
    replaced, _ = structurize(model, PLAN, replace=True)
    ordinary, ordinary_manifest = to_ordinary(replaced)
    assert ordinary_manifest == manifest
    path = tmp_path / "direct.onnx"
    x = torch.randn(1, 3, 8, 8)
    export(ordinary, path, x, ordinary_manifest)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = replaced.eval()(x).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def test_pt2_with_sidecar_manifest(tmp_path):
    model, manifest = _structured_model()
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "model.pt2"
    export(model, path, x, manifest)
    assert sidecar_path(path) == tmp_path / "model.manifest.json"
    assert Manifest.load(sidecar_path(path)).to_dict() == manifest.to_dict()
    loaded = torch.export.load(path)
    assert {f"{name}" for name in manifest.layers} <= set(loaded.state_dict)
    torch.testing.assert_close(loaded.module()(x), model(x))


def test_manifest_must_fit_the_model(tmp_path):
    model, _ = _structured_model()
    wrong = Manifest.from_dict(
        {
            "format": "structconv/1",
            "layers": {"7.weight": {"reduced_channels": 2, "reduced_kernel_size": [2, 2]}},
        }
    )
    with pytest.raises(ManifestError, match="7.weight"):
        export(model, tmp_path / "model.onnx", torch.randn(1, 3, 8, 8), wrong)
    assert not (tmp_path / "model.onnx").exists()


def test_structured_layers_must_be_made_ordinary_first(tmp_path):
    model, manifest = _structured_model()
    replaced, _ = structurize(model, PLAN, replace=True)
    with pytest.raises(ManifestError, match="0.weight"):
        export(replaced, tmp_path / "model.onnx", torch.randn(1, 3, 8, 8), manifest)


def test_unknown_suffix(tmp_path):
    model, manifest = _structured_model()
    with pytest.raises(ValueError, match="suffix"):
        export(model, tmp_path / "model.tflite", torch.randn(1, 3, 8, 8), manifest)


def test_lost_initializer_names_are_reported(tmp_path):
    """The TorchScript exporter merges initializers of equal value; export says which."""
    model = nn.Sequential(nn.Conv2d(2, 2, 3, bias=False), nn.Conv2d(2, 2, 3, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(1.0)
    model, manifest = structurize(model, Plan.parse("3x3:c=C,n=2"))
    with pytest.warns(UserWarning, match="lost the names"):
        export(model, tmp_path / "model.onnx", torch.randn(1, 2, 6, 6), manifest)
    assert Manifest.from_onnx(tmp_path / "model.onnx").layers == manifest.layers
