"""structurize / to_ordinary: projection onto the structure, manifests, module replacement."""

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from tvm_structconv.manifest import LayerSpec
from tvm_structconv.nn import StructuredConv2d, StructuredLinear, structurize, to_ordinary
from tvm_structconv.plan import Plan


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
            nn.ReLU(),
            nn.Conv2d(8, 8, 1),
        )
        self.head = nn.Linear(8 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).flatten(1))


PLAN = Plan.parse("3x3:c=C/2,n=2,grouped=yes;linear:c=C/4")
PLANNED = {"stem": (1, (2, 2)), "block.2": (4, (2, 2)), "head": (18, (1, 1))}


def _net() -> _Net:
    torch.manual_seed(0)
    net = _Net().double().eval()
    with torch.no_grad():
        net.block[0].running_mean.uniform_(-1, 1)
        net.block[0].running_var.uniform_(0.5, 2)
    return net


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_manifest_names_every_planned_weight():
    _, manifest = structurize(_net(), PLAN)
    assert dict(manifest.layers) == {
        f"{name}.weight": LayerSpec(channels, kernel)
        for name, (channels, kernel) in PLANNED.items()
    }


def test_planned_weights_become_exactly_structured_and_others_stay():
    net = _net()
    original = {name: value.clone() for name, value in net.state_dict().items()}
    structured, manifest = structurize(net, PLAN)
    structures = manifest.structures(structured)
    for name, structure in structures.items():
        assert original[name].ne(structured.state_dict()[name]).any()
        assert structure.residual(structured.state_dict()[name]) < 1e-12
        torch.testing.assert_close(structured.state_dict()[name], structure.project(original[name]))
    for name, value in structured.state_dict().items():
        if name not in structures:
            torch.testing.assert_close(value, original[name], rtol=0, atol=0)
    for name, value in net.state_dict().items():  # the input model is not mutated
        torch.testing.assert_close(value, original[name], rtol=0, atol=0)


def test_already_structured_model_computes_the_same_function():
    net, _ = structurize(_net(), PLAN)
    x = _input()
    again, _ = structurize(net, PLAN)
    torch.testing.assert_close(again(x), net(x), rtol=1e-12, atol=1e-12)
    replaced, _ = structurize(net, PLAN, replace=True)
    torch.testing.assert_close(replaced(x), net(x), rtol=1e-12, atol=1e-12)


def test_projection_changes_an_unstructured_model():
    net = _net()
    structured, _ = structurize(net, PLAN)
    x = _input()
    assert (structured(x) - net(x)).abs().max() > 1e-3


def test_replace_swaps_modules_and_to_ordinary_restores_them():
    projected, manifest = structurize(_net(), PLAN)
    replaced, replaced_manifest = structurize(_net(), PLAN, replace=True)
    assert replaced_manifest == manifest
    assert isinstance(replaced.stem, StructuredConv2d)
    assert isinstance(replaced.block[2], StructuredConv2d) and replaced.block[2].groups == 2
    assert isinstance(replaced.head, StructuredLinear)
    assert type(replaced.block[4]) is nn.Conv2d  # 1x1 conv not planned
    assert "stem.alpha" in replaced.state_dict() and "stem.weight" not in replaced.state_dict()
    x = _input()
    torch.testing.assert_close(replaced(x), projected(x))

    ordinary, ordinary_manifest = to_ordinary(replaced)
    assert ordinary_manifest == manifest
    assert isinstance(replaced.stem, StructuredConv2d)  # to_ordinary copies
    assert type(ordinary.stem) is nn.Conv2d and type(ordinary.head) is nn.Linear
    assert ordinary.state_dict().keys() == projected.state_dict().keys()
    for name, value in projected.state_dict().items():
        torch.testing.assert_close(ordinary.state_dict()[name], value)
    manifest.structures(ordinary)  # validates: names and shapes fit


def test_to_ordinary_of_a_bare_structured_layer():
    layer = StructuredConv2d(4, 2, 3, 2, 2, padding=1)
    conv, manifest = to_ordinary(layer)
    assert type(conv) is nn.Conv2d
    assert dict(manifest.layers) == {"weight": LayerSpec(2, (2, 2))}
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(conv(x), layer(x))


def test_replace_rejects_non_zero_padding_modes():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    projected, _ = structurize(net, PLAN)
    assert projected[0].padding_mode == "reflect"
    with pytest.raises(ValueError, match="padding_mode"):
        structurize(net, PLAN, replace=True)


@given(st.integers(1, 6), st.integers(1, 3), st.data())
def test_structurize_is_idempotent(channels, kernel, data):
    reduced_channels = data.draw(st.integers(1, channels))
    reduced_kernel = data.draw(st.integers(1, kernel))
    torch.manual_seed(channels * 10 + kernel)
    net = nn.Sequential(nn.Conv2d(channels, 3, kernel, padding=1, dtype=torch.float64), nn.Tanh())
    plan = Plan(layers={"0": (reduced_channels, (reduced_kernel, reduced_kernel))})
    once, manifest = structurize(net, plan)
    twice, _ = structurize(once, plan)
    torch.testing.assert_close(twice[0].weight, once[0].weight, rtol=1e-12, atol=1e-12)
    trivial = (reduced_channels, reduced_kernel) == (channels, kernel)
    assert len(manifest.layers) == (0 if trivial else 1)
