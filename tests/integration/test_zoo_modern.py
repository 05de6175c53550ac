"""RegNet, ConvNeXt and timm's GhostNet, MixNet, RepVGG and MobileOne through TorchScript ONNX: x86
original and structured checked against onnxruntime, aarch64 structured compiled."""

import pytest

from zoo_checks import assert_family

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "name", ["regnet_x", "regnet_y", "convnext_tiny", "ghostnet", "mixnet", "repvgg", "mobileone"]
)
def test_family_compiles_exactly(name):
    assert_family(name)
