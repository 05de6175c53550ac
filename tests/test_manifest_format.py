"""The manifest's ``format`` tag: required, exactly ``structconv/1``, and written on save."""

import json

import pytest

from tvm_structconv.manifest import FORMAT, LayerSpec, Manifest, ManifestError

LAYERS = {"conv.weight": {"reduced_channels": 2, "reduced_kernel_size": [2, 2]}}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"layers": LAYERS}, "'format' must be 'structconv/1', got None"),
        ({"format": "structconv/2", "layers": LAYERS}, "got 'structconv/2'"),
        ({"format": None, "layers": LAYERS}, "got None"),
        ({"format": "structconv/1"}, "'layers' must be an object"),
    ],
)
def test_a_missing_or_wrong_format_or_layers_is_refused(data, message):
    with pytest.raises(ManifestError, match=message) as error:
        Manifest.loads(json.dumps(data), "m.json")
    assert str(error.value).startswith("m.json: ")


def test_the_format_is_written_and_read_back(tmp_path):
    manifest = Manifest({"conv.weight": LayerSpec(2, (2, 1))})
    manifest.save(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["format"] == FORMAT == "structconv/1"
    assert Manifest.load(tmp_path / "m.json").layers == manifest.layers


def test_saved_json_is_indented_sorted_and_ends_with_a_newline(tmp_path):
    manifest = Manifest({"b.weight": LayerSpec(2, (2, 2)), "a.weight": LayerSpec(1, (1, 2))})
    manifest.save(tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert text == manifest.dumps() + "\n"
    assert text.startswith('{\n  "format": "structconv/1",\n  "layers": {\n    "a.weight"')
    assert text.index('"a.weight"') < text.index('"b.weight"')


def test_non_ascii_layer_names_survive_a_round_trip(tmp_path):
    manifest = Manifest({"блок.conv.weight": LayerSpec(2, (2, 2))})
    manifest.save(tmp_path / "m.json")
    assert Manifest.load(tmp_path / "m.json").layers == manifest.layers


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "m.json: not valid JSON: "),
        ("[]", "m.json: a manifest must be a JSON object, got list"),
        ('{"format": "structconv/1", "layers": {}, "x": 1}', "m.json: unknown top-level key 'x'"),
        ('{"format": "structconv/1", "layers": []}', "m.json: 'layers' must be an object"),
    ],
)
def test_malformed_text_names_the_source(text, message):
    with pytest.raises(ManifestError) as error:
        Manifest.loads(text, "m.json")
    assert str(error.value).startswith(message)


def test_a_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match=f"cannot read manifest {tmp_path}/none.json: "):
        Manifest.load(tmp_path / "none.json")


def test_broken_onnx_metadata_names_the_model_and_the_key(tmp_path):
    import onnx
    from onnx import helper

    graph = helper.make_graph([], "g", [], [])
    model = helper.make_model(graph)
    entry = model.metadata_props.add()
    entry.key, entry.value = "structconv", "{"
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ManifestError) as error:
        Manifest.from_onnx(tmp_path / "m.onnx")
    assert str(error.value).startswith(f"{tmp_path}/m.onnx (metadata 'structconv'): not valid")
    with pytest.raises(ManifestError, match=r"^<onnx model> \(metadata 'structconv'\)"):
        Manifest.from_onnx(model)


def test_specs_of_structures_round_trip():
    from tvm_structconv.structure import Structure

    structures = {"a.weight": Structure(8, 3, 4, (2, 1)), "b.weight": Structure(6, 1, 3, 1)}
    manifest = Manifest.from_structures(structures)
    assert manifest.layers == {"a.weight": LayerSpec(4, (2, 1)), "b.weight": LayerSpec(3, (1, 1))}
    assert manifest.structures_for_shapes({"a.weight": (5, 8, 3, 3), "b.weight": (2, 6)}) == (
        structures
    )


def test_structures_of_a_model_with_nested_module_names():
    import torch.nn as nn

    model = nn.Sequential(nn.Sequential(nn.Conv2d(4, 6, 3, groups=2)), nn.Linear(6, 3))
    manifest = Manifest({"0.0.weight": LayerSpec(2, (2, 2)), "1.weight": LayerSpec(3, (1, 1))})
    structures = manifest.structures(model)
    assert structures["0.0.weight"].groups == 2
    assert structures["0.0.weight"].in_channels == 4
    assert structures["1.weight"].kernel_size == (1, 1)


def test_a_spec_for_a_weight_that_is_neither_conv_nor_linear():
    with pytest.raises(ValueError, match=r"weight of shape \(2, 3, 4\) is neither conv nor linear"):
        LayerSpec(1, (1, 1)).structure((2, 3, 4))
    manifest = Manifest({"w": LayerSpec(1, (1, 1))}, "m.json")
    with pytest.raises(ManifestError, match=r"m.json: 'w' does not fit its weight of shape"):
        manifest.structures_for_shapes({"w": (2, 3, 4)})


def test_default_sources_and_groups():
    with pytest.raises(ManifestError, match="^<dict>: "):
        Manifest.from_dict({"layers": {}})
    with pytest.raises(ManifestError, match="^<string>: "):
        Manifest.loads("[]")
    structure = LayerSpec(2, (2, 2)).structure((6, 4, 3, 3))
    assert (structure.groups, structure.in_channels) == (1, 4)
