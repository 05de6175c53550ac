"""Mobile CNN families (SE blocks, hardswish/SiLU, channel shuffles, grouped and depthwise
convs) through TorchScript ONNX: x86 original and structured checked against onnxruntime,
aarch64 structured compiled; ShuffleNetV2 and MobileNetV3-Small at a batch of 8, 48x64."""

import pytest

from zoo_checks import assert_family

pytestmark = pytest.mark.slow

#: Families checked at a batch of 8 and a non-square input instead of 1x3x32x32 (one export and
#: three builds cover both; the others keep the single square image).
BATCHED = {
    "shufflenet_v2": {"size": (48, 64), "batch": 8},
    "mobilenet_v3_small": {"size": (48, 64), "batch": 8},
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
