"""A manifest must match its model: every entry by name, or (renamed by an exporter) by value.
A manifest of another model is a one-line error (--allow-unmatched compiles anyway); export()
refuses weights that were never projected; --detect that finds nothing says so."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.cli import main
from tvm_structconv.export import export
from tvm_structconv.manifest import LayerSpec, Manifest, ManifestError
from tvm_structconv.structure import Structure

from small_nets import structured_net

TOL = 1.2e-5


@settings(max_examples=8)
@given(
    channels=st.integers(2, 6),
    kernel=st.integers(2, 3),
    out_channels=st.integers(1, 4),
    data=st.data(),
)
def test_a_renamed_weight_is_matched_by_value_a_random_one_is_not(
    channels, kernel, out_channels, data
):
    reduced = data.draw(st.integers(1, channels - 1))
    structure = Structure(channels, kernel, reduced, kernel - 1)
    rng = np.random.default_rng(channels * 10 + kernel)
    random = rng.standard_normal((out_channels, channels, kernel, kernel))
    manifest = Manifest({"conv.weight": LayerSpec.of(structure)})
    renamed = {"onnx::Conv_7": (structure.project(random), 1)}
    assert manifest.unmatched(renamed, TOL) == []
    assert manifest.unmatched({"onnx::Conv_7": (random, 1)}, TOL) == ["conv.weight"]
    # a weight under its own name is the rewrite's to check, not this one's
    assert manifest.unmatched({"conv.weight": (random, 1)}, TOL) == []


def test_a_transposed_linear_weight_and_a_grouped_conv_are_matched():
    rng = np.random.default_rng(0)
    linear = Structure(8, 1, 4, 1)
    grouped = Structure(8, 3, 2, 2, groups=2)  # each group of 4 channels summed whole
    manifest = Manifest({"fc.weight": LayerSpec.of(linear), "g.weight": LayerSpec.of(grouped)})
    fc = linear.project(rng.standard_normal((6, 8, 1, 1)))[:, :, 0, 0]
    conv = grouped.project(rng.standard_normal((6, 4, 3, 3)))
    weights = {"onnx::MatMul_3": (fc.T, 1), "onnx::Conv_4": (conv, 2)}
    assert manifest.unmatched(weights, TOL) == []
    three = Structure(9, 3, 3, 2, groups=3)  # 6 filters: the quick check takes all of them
    kernel = three.project(rng.standard_normal((6, 3, 3, 3)))
    grouped_three = Manifest({"g3.weight": LayerSpec.of(three)})
    assert grouped_three.unmatched({"onnx::Conv_9": (kernel, 3)}, TOL) == []
    # the same kernel in a conv of other groups is another layer
    assert manifest.unmatched({**weights, "onnx::Conv_4": (conv, 1)}, TOL) == ["g.weight"]
    # a weight already named by another entry is not taken by value
    named = {"fc.weight": (fc, 1), "x": (rng.standard_normal((6, 4, 3, 3)), 2)}
    assert manifest.unmatched(named, TOL) == ["g.weight"]


@pytest.fixture(scope="module")
def onnx_net(exported_small_net, tmp_path_factory):
    """The small net's ONNX file and a manifest of another model (a ResNet's names)."""
    folder = tmp_path_factory.mktemp("other")
    other = Manifest(
        {
            f"layer{i}.0.conv1.weight": LayerSpec(c, (2, 2))
            for i, c in enumerate((64, 128, 256), start=1)
        }
    )
    other.save(folder / "resnet.manifest.json")
    return exported_small_net["onnx"], folder / "resnet.manifest.json"


def test_another_models_manifest_is_a_one_line_error(onnx_net, tmp_path, capsys):
    model, manifest = onnx_net
    argv = ["compile", str(model), "--manifest", str(manifest), "-o", str(tmp_path / "n.so")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(
        f"structconv: error: {manifest}: 'layer1.0.conv1.weight' and 2 more match no weight of "
        f"{model} by name or by value; is this manifest for another model? (--allow-unmatched"
    )
    assert main([*argv, "--allow-unmatched"]) == 0  # today's behaviour: found by value
    out = capsys.readouterr().out
    assert "layer1.0.conv1.weight                    manifest entry matched no weight" in out
    assert "2 of 3 layers rewritten" in out


def test_weights_renamed_by_constant_folding_still_compile(tmp_path, capsys):
    model, x, manifest = structured_net()
    path = tmp_path / "folded.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, do_constant_folding=True)
    manifest.save(tmp_path / "folded.manifest.json")
    argv = ["compile", str(path), "--manifest", str(tmp_path / "folded.manifest.json")]
    assert main([*argv, "-o", str(tmp_path / "f.so")]) == 0
    out = capsys.readouterr().out
    assert "their weights are matched by value" in out and "2 of 3 layers rewritten" in out


def test_export_refuses_weights_that_were_never_projected(tmp_path):
    model, x, manifest = structured_net()
    with torch.no_grad():
        model[0].weight.add_(0.01 * torch.randn_like(model[0].weight))
    with pytest.raises(ManifestError, match=r"'0.weight' is .* off its recorded Structure") as info:
        export(model, tmp_path / "net.onnx", x, manifest)
    assert "tvm_structconv.nn.structurize(model, plan)" in str(info.value)
    assert not (tmp_path / "net.onnx").exists()


def test_detect_that_finds_nothing_says_so(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    path = tmp_path / "plain.onnx"
    export(model, path, torch.randn(1, 3, 8, 8), Manifest({}))
    assert main(["compile", str(path), "--detect", "-o", str(tmp_path / "p.so")]) == 0
    captured = capsys.readouterr()
    assert "0 of 1 layers rewritten" in captured.out
    assert captured.err == (
        f"structconv: warning: --detect found no structured weight in {path}: nothing was "
        "rewritten (were the weights projected with tvm_structconv.nn.structurize before "
        "export?)\n"
    )
    assert json.loads(Manifest({}).dumps())["layers"] == {}


def test_compile_model_refuses_another_models_manifest_too(onnx_net):
    """The library path (compile_model, bench) refuses what the command line refuses."""
    from tvm_structconv.build import compile_model
    from tvm_structconv.frontend import load_model

    model, manifest = onnx_net
    imported = load_model(model, manifest=Manifest.load(manifest))
    with pytest.raises(ManifestError, match="is this manifest for another model"):
        compile_model(imported, "x86")
    compiled = compile_model(imported, "x86", allow_unmatched=True)
    assert "layer1.0.conv1.weight" in compiled.report.format()
