"""ResNet-18 through ``compile_model`` for this x86 host: its stride-1 structured convs run as
Winograd F(4, 2) / F(2, 2) or the direct kernel by output size, and the model matches torch."""

import numpy as np
import pytest

from tvm_structconv.build import compile_model
from tvm_structconv.frontend import load_model
from tvm_structconv.models import create_structured
from tvm_structconv.targets import make_target


@pytest.mark.slow
def test_resnet18_with_winograd_layers_matches_torch():
    built = create_structured("resnet18", plan="3x3:n=2,c=C", image_size=112, num_classes=10)
    x = built.example_input
    expected = built.model(x).detach().numpy()
    compiled = compile_model(load_model(built.model, x, built.manifest), make_target("x86"))
    kernels = {layer.name: layer.kernel for layer in compiled.report.rewritten}
    # outputs 28² (F(4, 2): 49 tiles), 14² (F(2, 2)), 7² and 4² (too few tiles), stride 2
    assert kernels["layer1.0.conv1.weight"] == "winograd F(4,2)"
    assert kernels["layer2.1.conv1.weight"] == "winograd F(2,2)"
    assert kernels["layer3.1.conv1.weight"] == "direct"
    assert kernels["layer2.0.conv1.weight"] == "direct"
    assert sum(kernel.startswith("winograd") for kernel in kernels.values()) == 7
    got = compiled.run(x.numpy())[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
