"""The two other import paths, on the families whose graphs differ most between exporters:
the dynamo ONNX exporter (BatchNorm folded by the exporter, ``Split`` for ``chunk``) and
``torch.export`` (``.pt2``), structured for x86, against onnxruntime or torch.

Every family through every path is ``benchmarks/zoo.py``'s job (the README's coverage table);
here a subset keeps CI fast, each graph feature through one exporter: channel shuffles and
``Split`` (dynamo), SE blocks with SiLU (dynamo) and hardswish (``.pt2``), LayerNorm with Linear
layers on NHWC activations (both: the dynamo exporter renames and transposes the Linear
weights), grouped convs with SE (``.pt2``), an adaptive pool (``.pt2``). DenseNet's
concatenations run through TorchScript ONNX in ``test_zoo_classic.py``.
"""

import pytest

from zoo_checks import assert_family

pytestmark = pytest.mark.slow

FAMILIES = {
    "dynamo": ["shufflenet_v2", "efficientnet_b0", "convnext_tiny"],
    "pt2": ["mobilenet_v3_small", "convnext_tiny", "regnet_y"],
}


CASES = [
    pytest.param(exporter, name, id=f"{exporter}-{name}")
    for exporter, names in FAMILIES.items()
    for name in names
]


@pytest.mark.parametrize("exporter, name", CASES)
def test_family_through_exporter(exporter, name):
    assert_family(name, exporter, builds=[("x86", True)])


def test_vgg_through_torch_export_at_a_small_size():
    # torch.export handles the adaptive pool up to 7x7 that the TorchScript exporter refuses
    assert_family("vgg11_bn", "pt2", size=(32, 32), builds=[("x86", True)])
