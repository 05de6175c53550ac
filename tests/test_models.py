"""Built-in models: torchvision's architectures, the registry, structured variants, MAC counts."""

import copy
import functools

import pytest
import torch
import torch.nn as nn

from tvm_structconv.manifest import Manifest
from tvm_structconv.models import (
    DEFAULT_PLAN,
    StructuredModel,
    create_model,
    create_structured,
    list_models,
    model_cost,
)
from tvm_structconv.nn.functional import structured_conv2d, structured_linear
from tvm_structconv.plan import Plan
from tvm_structconv.structure import Structure

# Facts about torchvision's architectures, the independent oracle: parameters for 1000 classes,
# state_dict length, and a sample of state_dict keys with their shapes.
TORCHVISION = {
    "resnet18": (
        11_689_512,
        122,
        {
            "conv1.weight": (64, 3, 7, 7),
            "bn1.running_mean": (64,),
            "layer1.0.conv1.weight": (64, 64, 3, 3),
            "layer2.0.conv1.weight": (128, 64, 3, 3),
            "layer2.0.downsample.0.weight": (128, 64, 1, 1),
            "layer2.0.downsample.1.running_var": (128,),
            "layer4.1.bn2.num_batches_tracked": (),
            "fc.weight": (1000, 512),
            "fc.bias": (1000,),
        },
    ),
    "resnet50": (
        25_557_032,
        320,
        {
            "layer1.0.conv1.weight": (64, 64, 1, 1),
            "layer1.0.conv2.weight": (64, 64, 3, 3),
            "layer1.0.conv3.weight": (256, 64, 1, 1),
            "layer1.0.downsample.0.weight": (256, 64, 1, 1),
            "layer2.0.conv2.weight": (128, 128, 3, 3),
            "layer3.5.bn3.running_var": (1024,),
            "layer4.2.conv3.weight": (2048, 512, 1, 1),
            "fc.weight": (1000, 2048),
        },
    ),
    "mobilenet_v2": (
        3_504_872,
        314,
        {
            "features.0.0.weight": (32, 3, 3, 3),
            "features.0.1.running_var": (32,),
            "features.1.conv.0.0.weight": (32, 1, 3, 3),
            "features.1.conv.1.weight": (16, 32, 1, 1),
            "features.1.conv.2.weight": (16,),
            "features.2.conv.0.0.weight": (96, 16, 1, 1),
            "features.2.conv.1.0.weight": (96, 1, 3, 3),
            "features.2.conv.2.weight": (24, 96, 1, 1),
            "features.2.conv.3.running_mean": (24,),
            "features.17.conv.2.weight": (320, 960, 1, 1),
            "features.18.0.weight": (1280, 320, 1, 1),
            "classifier.1.weight": (1000, 1280),
        },
    ),
}

# Plans reaching every kind of layer: strided, 1x1, depthwise (grouped) convs and Linear.
WIDE_PLAN = {
    "resnet50": "3x3:n=2,c=C/2;1x1:c=C/2;linear:c=C/4",
    "mobilenet_v2": "3x3:n=2,c=C,depthwise=yes;1x1:c=C/2;linear:c=C/2",
}


@functools.cache
def default_model(name: str) -> nn.Module:
    return create_model(name)


@functools.cache
def structured(name: str, plan: str = DEFAULT_PLAN, image_size: int = 64) -> StructuredModel:
    return create_structured(name, plan, image_size=image_size, num_classes=10)


CASES = [
    ("resnet18", DEFAULT_PLAN, 64),
    ("mobilenet_v2", DEFAULT_PLAN, 64),
    ("mobilenet_v2", WIDE_PLAN["mobilenet_v2"], 64),
    ("resnet50", WIDE_PLAN["resnet50"], 32),
]


# ----------------------------------------------------------------------- registry
def test_list_models():
    assert list_models() == ["mobilenet_v2", "resnet18", "resnet50"]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet19.*mobilenet_v2, resnet18, resnet50"):
        create_model("resnet19")
    with pytest.raises(ValueError, match="known models"):
        create_structured("vgg16")


# ----------------------------------------------------------------------- architectures
@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_parameters_and_state_dict_keys(name):
    params, keys, sample = TORCHVISION[name]
    model = default_model(name)
    state = model.state_dict()
    assert sum(parameter.numel() for parameter in model.parameters()) == params
    assert len(state) == keys
    assert {key: tuple(state[key].shape) for key in sample} == sample


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_initialization(name):
    for module in default_model(name).modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            if module.weight.numel() >= 1000:
                assert module.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("resnet18", {}, (64, 48)),
        ("resnet50", {}, (32, 32)),
        ("mobilenet_v2", {}, (64, 64)),
        ("mobilenet_v2", {"width_mult": 0.5}, (32, 40)),
    ],
)
def test_output_shape(name, kwargs, size):
    model = create_model(name, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


# ----------------------------------------------------------------------- structured variants
@pytest.mark.parametrize("name, plan, size", CASES)
def test_planned_weights_are_exactly_structured(name, plan, size):
    variant = structured(name, plan, size)
    model = variant.model
    planned = {f"{module}.weight": s for module, s in Plan.parse(plan).apply(model).items()}
    assert planned and variant.structures == planned
    assert variant.manifest == Manifest.from_structures(planned)
    assert variant.manifest.structures(model) == planned
    state = model.state_dict()
    for weight_name, structure in variant.structures.items():
        assert structure.residual(state[weight_name]).item() < 1e-5, weight_name
    assert variant.example_input.shape == (1, 3, size, size)
    assert not any(module.training for module in model.modules())


def test_default_plan_structures_what_pays():
    assert len(structured("resnet18").structures) == 16  # every 3x3 conv, no 1x1
    # MobileNetV2: the 1x1 expansions of 160 and 320 channels; not the 3-channel stem
    assert sorted(structured("mobilenet_v2").structures) == [
        "features.15.conv.0.0.weight",
        "features.16.conv.0.0.weight",
        "features.17.conv.0.0.weight",
        "features.18.0.weight",
    ]
    skipped = Plan.parse(DEFAULT_PLAN).skipped(default_model("mobilenet_v2"))
    assert skipped["features.0.0"].startswith("fewer input channels per group than")
    assert skipped["features.1.conv.0.0"] == "depthwise (the rule has depthwise=no)"
    assert skipped["features.17.conv.2"].endswith("min_expansion=4 (has 0.333)")


class FunctionalOracle(nn.Module):
    """A layer run as sum-pool + reduced op with ``alpha = structure.decompose(W)``."""

    def __init__(self, layer: nn.Module, structure: Structure) -> None:
        super().__init__()
        self.layer, self.structure = layer, structure
        self.alpha = structure.decompose(layer.weight.detach())
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if isinstance(self.layer, nn.Linear):
            return structured_linear(x, self.alpha, self.structure, self.layer.bias)
        return structured_conv2d(
            x,
            self.alpha,
            self.structure,
            self.layer.bias,
            stride=self.layer.stride,
            padding=self.layer.padding,
            dilation=self.layer.dilation,
        )


@pytest.mark.parametrize("name, plan, size", CASES)
def test_forward_equals_structured_functional_ops(name, plan, size):
    variant = structured(name, plan, size)
    oracle = copy.deepcopy(variant.model)
    replaced = []
    for weight_name, structure in variant.structures.items():
        module_name = weight_name.rpartition(".")[0]
        replaced.append(FunctionalOracle(oracle.get_submodule(module_name), structure))
        oracle.set_submodule(module_name, replaced[-1])
    with torch.no_grad():
        expected = oracle(variant.example_input)
        actual = variant.model(variant.example_input)
    assert all(layer.calls == 1 for layer in replaced)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, plan, size", [case for case in CASES if case[1] == DEFAULT_PLAN])
def test_activations_stay_of_order_one(name, plan, size):
    stds, logits = batchnorm_output_stds(structured(name, plan, size))
    # 0.4, not 0.5: the default plan's c = C/2 1x1 expansions low-pass the channels (see below)
    assert 0.4 < min(stds) and max(stds) < 3.0
    assert torch.isfinite(logits).all() and 0.05 < logits.std() < 3.0


@pytest.mark.parametrize("name, plan, size", [case for case in CASES if case[1] != DEFAULT_PLAN])
def test_activations_stay_bounded_under_wide_plans(name, plan, size):
    # Windows of C/2 + 1 channels low-pass the channels: deep activations vary more from image
    # to image than the calibration batch shows, and the structured classifier sums its
    # positive (post-ReLU) features coherently, so its logits are tens, not ones.
    stds, logits = batchnorm_output_stds(structured(name, plan, size))
    assert 0.1 < min(stds) and max(stds) < 10.0
    assert torch.isfinite(logits).all()


def batchnorm_output_stds(variant: StructuredModel):
    """Std of every BatchNorm output, and the logits, on the example input."""
    stds = []
    hooks = [
        module.register_forward_hook(lambda module, inputs, output: stds.append(output.std()))
        for module in variant.model.modules()
        if isinstance(module, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        logits = variant.model(variant.example_input)
    for hook in hooks:
        hook.remove()
    return stds, logits


def test_batchnorm_parameters_and_statistics_are_nontrivial():
    for module in structured("resnet18").model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert not torch.all(module.weight == 1) and not torch.all(module.bias == 0)
            assert module.running_mean.abs().min() > 0
            assert not torch.allclose(module.running_var, torch.ones_like(module.running_var))
            assert module.momentum == 0.1


def test_same_seed_same_model_other_seed_differs():
    plan = WIDE_PLAN["mobilenet_v2"]
    rng_state = torch.get_rng_state()
    first = create_structured("mobilenet_v2", plan, seed=3, image_size=32)
    second = create_structured("mobilenet_v2", Plan.parse(plan), seed=3, image_size=32)
    other = create_structured("mobilenet_v2", plan, seed=4, image_size=32)
    assert torch.equal(torch.get_rng_state(), rng_state)
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)
    assert torch.equal(first.example_input, second.example_input)
    other_state = other.model.state_dict()
    for key in (
        "features.0.0.weight",  # structured
        "features.1.conv.0.0.weight",  # structured depthwise
        "features.2.conv.3.running_var",
        "classifier.1.weight",  # structured linear
    ):
        assert not torch.equal(first_state[key], other_state[key]), key
    assert not torch.equal(first.example_input, other.example_input)


def test_rectangular_image_size():
    variant = create_structured("mobilenet_v2", image_size=(32, 48), num_classes=5)
    assert variant.example_input.shape == (1, 3, 32, 48)
    with torch.no_grad():
        assert variant.model(variant.example_input).shape == (1, 5)


# ----------------------------------------------------------------------- MACs and parameters
def test_resnet18_cost_matches_the_headline():
    model = default_model("resnet18")
    planned = {f"{name}.weight": s for name, s in Plan.parse(DEFAULT_PLAN).apply(model).items()}
    cost = model_cost(model, planned, (1, 3, 224, 224))
    assert cost.original_macs == pytest.approx(1_814_073_344, rel=0.01)
    assert cost.structured_macs == pytest.approx(0.88e9, rel=0.01)
    assert 2.0 < cost.mac_ratio < 2.1
    saved = sum(
        module.weight.numel() * 5 // 9
        for module in model.modules()
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)
    )
    assert cost.original_params == 11_689_512
    assert cost.structured_params == 11_689_512 - saved
    assert cost.summary().startswith("1.81 GMAC -> 0.88 GMAC (2.05x), 11.69 M")


def test_structured_model_cost_uses_its_example_input():
    variant = structured("resnet18")
    cost = variant.cost()
    assert cost.original_macs == pytest.approx(1_814_073_344 * (64 / 224) ** 2, rel=0.05)
    assert set(variant.structures) <= set(cost.layers)
    assert cost.pool_adds > 0


def test_model_cost_counts_grouped_conv_and_linear_exactly():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(200, 10))
    structures = {"0.weight": Structure(4, 3, 2, 2, groups=2), "2.weight": Structure(200, 1, 50, 1)}
    model.train()
    cost = model_cost(model, structures, (3, 4, 5, 5))
    assert cost.layers["0.weight"].original_macs == 3 * 8 * 2 * 9 * 25
    assert cost.layers["0.weight"].structured_macs == 3 * 8 * 1 * 4 * 25
    assert cost.original_macs == 3 * (8 * 2 * 9 * 25 + 200 * 10)
    assert cost.structured_macs == 3 * (8 * 1 * 4 * 25 + 50 * 10)
    assert cost.original_params == 8 * 2 * 9 + 8 + 200 * 10 + 10
    assert cost.structured_params == 8 * 1 * 4 + 8 + 50 * 10 + 10
    assert model.training


def test_model_cost_rejects_what_is_not_a_fitting_weight():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU())
    with pytest.raises(ValueError, match="'0.bias' is not the weight"):
        model_cost(model, {"0.bias": Structure(4, 3, 2, 2)}, (1, 4, 5, 5))
    with pytest.raises(ValueError, match="'0.weight' has shape"):
        model_cost(model, {"0.weight": Structure(8, 3, 2, 2)}, (1, 4, 5, 5))
