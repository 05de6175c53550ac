"""A float64 model compiled end to end stays float64: the small structured net (conv,
BatchNorm, ReLU, a structured conv, a Linear head) in float64, exported to ONNX, compiled
(BatchNorm folded, both convs rewritten) for the scheduled x86 build and TVM's default
pipeline, and run against torch in float64 to 1e-10. A float32-rounded weight or alpha
anywhere on the way would be off by about 1e-7.

The same model through ``torch.export`` is refused (``tests/test_frontend_dtypes.py``); the
passes' constants one by one are in ``tests/transform/test_constant_dtypes.py``.
"""

import numpy as np
import pytest
import torch
import tvm

from tvm_structconv.build import compile_model
from tvm_structconv.export import export
from tvm_structconv.frontend import load_model

from small_nets import structured_net


@pytest.fixture(scope="module")
def float64_net(tmp_path_factory):
    model, x, manifest = structured_net(dtype=torch.float64)
    path = tmp_path_factory.mktemp("float64") / "net.onnx"
    export(model, path, x, manifest)
    return path, x, model(x).detach().numpy()


@pytest.mark.parametrize("target", ["x86", "llvm"])
def test_a_float64_model_matches_torch_in_float64(float64_net, target):
    path, x, expected = float64_net
    target = tvm.target.Target({"kind": "llvm"}) if target == "llvm" else target
    compiled = compile_model(load_model(path), target, tuning_logs=False)
    assert sorted(layer.name for layer in compiled.report.rewritten) == ["0.weight", "3.weight"]
    assert compiled.folded == ["0.weight"]
    (got,) = compiled.run(x.numpy())
    assert got.dtype == np.float64 and expected.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
