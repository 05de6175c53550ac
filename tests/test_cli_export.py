"""structconv export: a built-in model structured by its plan, the layers left alone and why."""

import onnxruntime
import pytest
import torch

from tvm_structconv.cli import main
from tvm_structconv.manifest import Manifest
from tvm_structconv.models import DEFAULT_PLAN, create_structured


@pytest.mark.slow
def test_export_says_what_the_default_plan_structures_and_skips(tmp_path, capsys):
    assert main(["export", "mobilenet_v2", "-o", str(tmp_path), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert f"plan {DEFAULT_PLAN}: 4 layers structured" in out
    assert "left alone: 17 layers, depthwise (the rule has depthwise=no)" in out
    assert (
        "left alone: 1 layers, fewer input channels per group than the rule's min_channels=16"
        in (out)
    )
    # the summary groups layers by reason without the per-layer value
    assert "(has " not in out
    built = create_structured("mobilenet_v2", image_size=32)
    session = onnxruntime.InferenceSession(
        str(tmp_path / "mobilenet_v2.onnx"), providers=["CPUExecutionProvider"]
    )
    x = built.example_input
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), built.model(x), rtol=1e-4, atol=1e-4)
    manifest = Manifest.from_onnx(tmp_path / "mobilenet_v2.onnx")
    assert set(manifest.layers) == set(built.structures)
