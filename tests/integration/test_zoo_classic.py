"""torchvision's classic CNN families through TorchScript ONNX: x86 original and structured
checked against onnxruntime, aarch64 structured compiled. Small inputs keep CI fast; ResNet-50
runs a batch of 8 at 32x48."""

import pytest

from zoo_checks import assert_family

pytestmark = pytest.mark.slow


#: Families checked at a batch of 8 and a non-square input instead of 1x3x32x32 (one export and
#: three builds cover both; the others keep the single square image).
BATCHED = {"resnet50": {"size": (32, 48), "batch": 8}}


@pytest.mark.parametrize(
    "name", ["resnet50", "resnext50", "wide_resnet50", "densenet121", "googlenet", "squeezenet1_1"]
)
def test_family_compiles_exactly(name):
    assert_family(name, **BATCHED.get(name, {}))


def test_inception_v3_at_its_smallest_input():
    assert_family("inception_v3", size=(75, 75))


def test_vgg_at_224():
    # the TorchScript exporter cannot export VGG's adaptive pool up to 7x7 from a smaller map
    assert_family("vgg11_bn", size=(224, 224), builds=[("x86", False), ("x86", True)])
