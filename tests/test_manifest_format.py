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
