"""Where the frontend takes the manifest from, on one ONNX file that has all three: the
argument, then the ONNX metadata, then the sidecar ``<stem>.manifest.json``."""

import shutil

import onnx
import pytest

from tvm_structconv.export import sidecar_path
from tvm_structconv.frontend import load_model
from tvm_structconv.manifest import ONNX_METADATA_KEY, LayerSpec, Manifest

# three different manifests of the small net's layers, one per origin
IN_METADATA = {"0.weight": LayerSpec(2, (2, 2)), "3.weight": LayerSpec(8, (2, 2))}
IN_SIDECAR = {"3.weight": LayerSpec(8, (2, 2))}
AS_ARGUMENT = {"0.weight": LayerSpec(2, (2, 2))}


@pytest.fixture()
def onnx_with_all_three(exported_small_net, tmp_path):
    """A copy of the small net's ONNX file (metadata inside), with a sidecar and an argument."""
    path = tmp_path / "model.onnx"
    shutil.copy(exported_small_net["onnx"], path)
    assert Manifest.from_onnx(path).layers == IN_METADATA
    Manifest(IN_SIDECAR).save(sidecar_path(path))
    argument = tmp_path / "argument.json"
    Manifest(AS_ARGUMENT).save(argument)
    return path, argument


def test_an_explicit_manifest_wins_over_metadata_and_sidecar(onnx_with_all_three):
    path, argument = onnx_with_all_three
    for given in (argument, str(argument), Manifest(AS_ARGUMENT)):
        imported = load_model(path, manifest=given)
        assert imported.manifest.layers == AS_ARGUMENT
        assert imported.manifest_origin == "argument"


def test_the_metadata_wins_over_the_sidecar(onnx_with_all_three):
    path, _ = onnx_with_all_three
    imported = load_model(path)
    assert imported.manifest.layers == IN_METADATA
    assert imported.manifest_origin == "ONNX metadata"


def test_the_sidecar_is_the_last_resort(onnx_with_all_three):
    path, _ = onnx_with_all_three
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    imported = load_model(path)
    assert imported.manifest.layers == IN_SIDECAR
    assert imported.manifest_origin == f"sidecar {sidecar_path(path)}"
    sidecar_path(path).unlink()
    nothing = load_model(path)
    assert dict(nothing.manifest.layers) == {} and nothing.manifest_origin == "none"
