"""Built-in structured models through both frontends: TVM build vs torch and onnxruntime."""

import numpy as np
import onnxruntime
import pytest
import tvm

from tvm_structconv.build import compile_model
from tvm_structconv.export import export
from tvm_structconv.frontend import load_model
from tvm_structconv.models import create_structured

TARGET = tvm.target.Target({"kind": "llvm"})

CASES = [
    ("resnet18", "3x3:n=2,c=C", 16),
    ("mobilenet_v2", "3x3:n=2,c=C;1x1:c=C/2,min_channels=16;linear:c=C/2", None),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, plan, expected_rewrites", CASES)
def test_structured_builtin_model_matches_torch_and_onnxruntime(
    tmp_path, name, plan, expected_rewrites
):
    built = create_structured(name, plan=plan, image_size=32, num_classes=10)
    x = built.example_input
    reference = built.model(x).detach().numpy()
    onnx_path = tmp_path / f"{name}.onnx"
    export(built.model, onnx_path, x, built.manifest)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected_onnx = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    scale = np.abs(reference).max()
    for imported, expected in (
        (load_model(built.model, x, built.manifest), reference),
        (load_model(onnx_path), expected_onnx),
    ):
        compiled = compile_model(imported, TARGET)
        rewritten = {layer.name for layer in compiled.report.rewritten}
        assert rewritten == set(built.structures), compiled.report.format()
        if expected_rewrites is not None:
            assert len(rewritten) == expected_rewrites
        np.testing.assert_allclose(
            compiled.run(x.numpy())[0], expected, rtol=1e-3, atol=1e-4 * scale
        )
