"""Manifest: JSON and ONNX metadata round trips, every malformed input's error, detect()."""

import json

import numpy as np
import onnx
import pytest
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from tvm_structconv.manifest import (
    FORMAT,
    LayerSpec,
    Manifest,
    ManifestError,
    detect,
)
from tvm_structconv.structure import Structure

from strategies import structures


def small_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, groups=4),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


MANIFEST = Manifest(
    {
        "0.weight": LayerSpec(4, (2, 2)),
        "2.weight": LayerSpec(8, (3, 1)),
        "4.weight": LayerSpec(5, (1, 1)),
    }
)


def test_json_round_trip(tmp_path):
    path = tmp_path / "m.json"
    MANIFEST.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT
    assert data["layers"]["0.weight"] == {"reduced_channels": 4, "reduced_kernel_size": [2, 2]}
    loaded = Manifest.load(path)
    assert loaded.layers == MANIFEST.layers
    assert loaded.source == str(path)


def test_onnx_metadata_round_trip(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph)
    assert Manifest.from_onnx(model) is None
    MANIFEST.embed_onnx(model)
    MANIFEST.embed_onnx(model)  # replaces, never duplicates
    assert [p.key for p in model.metadata_props] == ["structconv"]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert Manifest.from_onnx(path).layers == MANIFEST.layers
    assert Manifest.from_onnx(model).layers == MANIFEST.layers


def test_structures_validate_against_model():
    structures = MANIFEST.structures(small_model())
    assert structures["0.weight"] == Structure(8, 3, 4, 2)
    assert structures["2.weight"] == Structure(16, 3, 8, (3, 1), groups=4)
    assert structures["4.weight"] == Structure(16, 1, 5, 1)


VALID = {"reduced_channels": 4, "reduced_kernel_size": [2, 2]}


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "a manifest must be a JSON object, got list"),
        (
            {"format": "structconv/2", "layers": {}},
            "'format' must be 'structconv/1', got 'structconv/2'",
        ),
        ({"format": FORMAT, "layers": {}, "extra": 1}, "unknown top-level key 'extra'"),
        ({"format": FORMAT, "layers": []}, "'layers' must be an object"),
        (
            {"format": FORMAT, "layers": {"a.weight": 3}},
            "layers['a.weight'] must be an object, got int",
        ),
        (
            {"format": FORMAT, "layers": {"a.weight": {**VALID, "n": 2}}},
            "layers['a.weight'] has unknown key 'n'",
        ),
        (
            {"format": FORMAT, "layers": {"a.weight": {"reduced_channels": 4}}},
            "layers['a.weight'] is missing 'reduced_kernel_size'",
        ),
        (
            {"format": FORMAT, "layers": {"a.weight": {**VALID, "reduced_channels": "4"}}},
            "layers['a.weight'].reduced_channels must be a positive int, got '4'",
        ),
        (
            {"format": FORMAT, "layers": {"a.weight": {**VALID, "reduced_channels": True}}},
            "reduced_channels must be a positive int, got True",
        ),
        (
            {"format": FORMAT, "layers": {"a.weight": {**VALID, "reduced_channels": 0}}},
            "reduced_channels must be a positive int, got 0",
        ),
        (
            {"format": FORMAT, "layers": {"a.weight": {**VALID, "reduced_kernel_size": [2, 2, 2]}}},
            "reduced_kernel_size must be a positive int or [nh, nw], got [2, 2, 2]",
        ),
        (
            {"format": FORMAT, "layers": {"a.weight": {**VALID, "reduced_kernel_size": [2, 0]}}},
            "reduced_kernel_size must be a positive int or [nh, nw]",
        ),
        ({"format": FORMAT, "layers": {"": VALID}}, "layer key '' must be a non-empty string"),
    ],
)
def test_malformed_manifest_errors_name_the_key_and_file(data, message):
    with pytest.raises(ManifestError) as error:
        Manifest.from_dict(data, source="bad.json")
    assert str(error.value).startswith("bad.json: ")
    assert message in str(error.value)


def test_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ManifestError, match=f"{path}: not valid JSON"):
        Manifest.load(path)
    with pytest.raises(ManifestError, match="cannot read manifest .*missing.json"):
        Manifest.load(tmp_path / "missing.json")


def test_integer_kernel_size_is_accepted():
    manifest = Manifest.from_dict(
        {
            "format": FORMAT,
            "layers": {"a.weight": {"reduced_channels": 2, "reduced_kernel_size": 2}},
        }
    )
    assert manifest.layers["a.weight"].reduced_kernel_size == (2, 2)


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            {"9.weight": LayerSpec(4, (2, 2))},
            "'9.weight' is not the weight of a Conv2d or Linear layer",
        ),
        (
            {"1.weight": LayerSpec(4, (2, 2))},
            "'1.weight' is not the weight of a Conv2d or Linear layer",
        ),
        (
            {"0.bias": LayerSpec(4, (2, 2))},
            "'0.bias' is not the weight of a Conv2d or Linear layer",
        ),
        (
            {"0.weight": LayerSpec(9, (2, 2))},
            "'0.weight' does not fit its weight of shape (16, 8, 3, 3): "
            "reduced_channels=9 is larger",
        ),
        ({"0.weight": LayerSpec(4, (4, 2))}, "'0.weight' does not fit its weight"),
        ({"2.weight": LayerSpec(6, (2, 2))}, "reduced_channels=6 is not divisible by groups=4"),
        (
            {"4.weight": LayerSpec(4, (2, 2))},
            "'4.weight' does not fit its weight of shape (10, 16)",
        ),
    ],
)
def test_manifest_that_does_not_fit_the_model(layers, message):
    with pytest.raises(ManifestError) as error:
        Manifest(layers, source="m.json").structures(small_model())
    assert str(error.value).startswith("m.json: ")
    assert message in str(error.value)


def test_structures_for_shapes():
    shapes = {"w": (8, 4, 3, 3)}
    assert Manifest({"w": LayerSpec(4, (2, 2))}).structures_for_shapes(shapes, {"w": 2}) == {
        "w": Structure(8, 3, 4, 2, groups=2)
    }
    with pytest.raises(ManifestError, match="'v' names no weight of the model"):
        Manifest({"v": LayerSpec(4, (2, 2))}).structures_for_shapes(shapes)


@given(structures(max_channels=10, max_kernel=4), st.integers(0, 2**31 - 1))
def test_detect_finds_the_recorded_structure(structure, seed):
    out_channels = 12 * structure.groups  # at least c outputs, so the rank bound is tight
    rng = np.random.default_rng(seed)
    weight = structure.compose(rng.standard_normal(structure.alpha_shape(out_channels))).astype(
        np.float32
    )
    found = detect(weight, tol=1e-4, groups=structure.groups)
    if structure.is_trivial:
        assert found is None
        return
    assert found == structure


@given(structures(max_channels=24, max_kernel=3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_detect_finds_a_structure_with_fewer_outputs_than_reduced_channels(
    structure, outputs, seed
):
    # a Linear 4C -> C with c = 2C: the weight's rank over channels is below c and says nothing
    rng = np.random.default_rng(seed)
    alpha = rng.standard_normal(structure.alpha_shape(outputs * structure.groups))
    weight = structure.compose(alpha).astype(np.float32)
    found = detect(weight, tol=1e-4, groups=structure.groups)
    if structure.is_trivial:
        assert found is None
        return
    assert found is not None and found.residual(weight.astype(np.float64)) <= 1e-4
    size = structure.reduced_channels * np.prod(structure.reduced_kernel_size)
    assert found.reduced_channels * np.prod(found.reduced_kernel_size) <= size


def test_detect_linear_with_fewer_outputs_than_reduced_inputs():
    linear = Structure(192, 1, 96, 1)  # ConvNeXt's fc2 (4C -> C) with c = C/2 of its input
    weight = linear.compose(np.random.default_rng(7).standard_normal((48, 96))).astype(np.float32)
    assert detect(weight, tol=1e-5) == linear


def test_detect_exact_structure_and_random_weights():
    structure = Structure(32, 3, 16, 2)
    weight = structure.compose(np.random.default_rng(3).standard_normal(structure.alpha_shape(32)))
    assert detect(weight) == structure
    assert detect(np.random.default_rng(4).standard_normal((32, 32, 3, 3))) is None
    assert detect(np.zeros((4, 4, 3, 3))) is None
    linear = Structure(20, 1, 5, 1)
    assert detect(linear.compose(np.random.default_rng(5).standard_normal((30, 5)))) == linear
    with pytest.raises(ValueError, match="weight must be 2-D or 4-D"):
        detect(np.zeros((3, 3, 3)))


def test_detect_respects_tolerance():
    structure = Structure(16, 3, 8, 2)
    rng = np.random.default_rng(6)
    weight = structure.compose(rng.standard_normal(structure.alpha_shape(16)))
    noisy = weight + 1e-3 * np.linalg.norm(weight) / np.sqrt(weight.size) * rng.standard_normal(
        weight.shape
    )
    assert detect(noisy, tol=1e-5) is None
    assert detect(noisy, tol=1e-2) == structure
