"""Mobile CNN families (SE blocks, hardswish/SiLU, channel shuffles, grouped and depthwise
convs) through TorchScript ONNX: x86 original and structured checked against onnxruntime,
aarch64 structured compiled; ShuffleNetV2 and MobileNetV3-Small at a batch of 8, 48x64 (their
aarch64 structured build run under qemu instead: test_zoo_qemu.py)."""

import pytest

from zoo_checks import MOBILE_BATCHED, assert_family

pytestmark = pytest.mark.slow

#: Families checked at a batch of 8 and a non-square input instead of 1x3x32x32 (one export
#: covers both; the others keep the single square image). Their aarch64 structured build, at
#: that shape, is compiled, run under qemu and checked in test_zoo_qemu.py.
BATCHED = {
    name: {**shape, "builds": [("x86", False), ("x86", True)]}
    for name, shape in MOBILE_BATCHED.items()
}


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
    assert_family(name, **BATCHED.get(name, {}))
