"""RegNet, ConvNeXt and timm's GhostNet, MixNet and RepVGG through TorchScript ONNX: x86
original and structured checked against onnxruntime, aarch64 structured compiled."""

import pytest

from zoo_checks import assert_family

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "name", ["regnet_x", "regnet_y", "convnext_tiny", "ghostnet", "mixnet", "repvgg"]
)
def test_family_compiles_exactly(name):
    assert_family(name)
