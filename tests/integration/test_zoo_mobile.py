"""Mobile CNN families (SE blocks, hardswish/SiLU, channel shuffles, grouped and depthwise
convs) through TorchScript ONNX: x86 original and structured checked against onnxruntime,
aarch64 structured compiled."""

import pytest

from zoo_checks import assert_family

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "name",
    [
        "shufflenet_v2",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "mobilenet_v3_small",
        "mnasnet",
        "efficientnet_b0",
    ],
)
def test_family_compiles_exactly(name):
    assert_family(name)


@pytest.mark.parametrize("name", ["shufflenet_v2", "mobilenet_v3_small"])
def test_batch_8_and_a_non_square_input(name):
    assert_family(name, size=(48, 64), batch=8, builds=[("x86", False), ("x86", True)])
