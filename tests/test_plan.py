"""Plans: rule parsing, matching, per-layer overrides and their errors."""

from fractions import Fraction

import pytest
import torch.nn as nn

from tvm_structconv.plan import Plan, PlanError, Rule
from tvm_structconv.structure import Structure


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3),  # 0: 3x3, 3 channels
        nn.Conv2d(16, 32, 3),  # 1: 3x3
        nn.Conv2d(32, 32, 3, groups=32),  # 2: depthwise
        nn.Conv2d(32, 64, 1),  # 3: 1x1
        nn.Conv2d(64, 64, 3, groups=4),  # 4: grouped 3x3
        nn.Linear(64, 10),  # 5
    )


def test_parse_rules():
    plan = Plan.parse(
        "3x3:n=2,c=C/2,min_channels=8; 1x1:c=16 ; linear:c=C/4; 5x3:n=3x2,depthwise=yes"
    )
    assert plan.rules == [
        Rule((3, 3), Fraction(1, 2), None, (2, 2), 8, False),
        Rule((1, 1), Fraction(1), 16, None, 1, False),
        Rule(None, Fraction(1, 4), None, None, 1, False),
        Rule((5, 3), Fraction(1), None, (3, 2), 1, True),
    ]


def test_apply_follows_rules_and_skips_trivial_depthwise_and_grouped():
    planned = Plan.parse("3x3:n=2,c=C/2,min_channels=8;1x1:c=C/2;linear:c=C/4").apply(model())
    assert planned == {
        "1": Structure(16, 3, 8, 2),
        "3": Structure(32, 1, 16, 1),
        "5": Structure(64, 1, 16, 1),
    }
    grouped = Plan.parse("3x3:n=2,c=C/2,grouped=yes").apply(model())
    assert grouped["4"] == Structure(64, 3, 32, 2, groups=4)
    depthwise = Plan.parse("3x3:n=2,depthwise=yes").apply(model())
    assert depthwise["2"] == Structure(32, 3, 32, 2, groups=32)
    assert "2" not in Plan.parse("3x3:n=2").apply(model())
    # c = C and n = N reduces nothing: left out
    assert Plan.parse("1x1:c=C").apply(model()) == {}


def test_per_layer_entries_override_rules():
    plan = Plan(rules=Plan.parse("3x3:n=2").rules, layers={"1": (4, (1, 1)), "0": None})
    planned = plan.apply(model())
    assert planned["1"] == Structure(16, 3, 4, 1)
    assert "0" not in planned
    with pytest.raises(PlanError, match="plan names layers the model does not have: nope"):
        Plan(layers={"nope": (1, (1, 1))}).apply(model())


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "has no rule"),
        ("3y3:n=2", "kind must be HxW"),
        ("3x3:n", "option 'n' is not key=value"),
        ("3x3:c=C/0", "c='C/0' needs a positive divisor"),
        ("3x3:c=half", "c must be C, C/k or a positive int"),
        ("3x3:n=two", "n must be an int or HxW"),
        ("3x3:depthwise=maybe", "depthwise must be yes or no"),
        ("3x3:min_channels=x", "min_channels must be an int"),
        ("3x3:grouped=1", "grouped must be yes or no"),
        ("1x1:min_expansion=lots", "min_expansion must be a number"),
        ("3x3:k=2", "unknown option 'k'"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(PlanError, match=message):
        Plan.parse(text)


def test_rule_asking_for_too_many_channels():
    with pytest.raises(PlanError, match="c=32 per group, the layer has only 16"):
        Plan.parse("3x3:c=32").apply(nn.Sequential(nn.Conv2d(16, 8, 3)))


def test_min_expansion_keeps_expanding_layers_only():
    layers = nn.Sequential(
        nn.Conv2d(32, 128, 1), nn.Conv2d(128, 32, 1), nn.Conv2d(32, 64, 1), nn.Linear(8, 32)
    )
    plan = Plan.parse("1x1:c=C/2,min_expansion=4;linear:c=C/2,min_expansion=3.5")
    assert sorted(plan.apply(layers)) == ["0", "3"]
    assert Plan.parse("1x1:c=C/2,min_expansion=1/4").apply(layers).keys() == {"0", "1", "2"}


def test_skipped_layers_say_why():
    plan = Plan(rules=Plan.parse("3x3:n=2,min_channels=8;1x1:c=C,min_expansion=4").rules)
    plan.layers["1"] = None
    assert plan.skipped(model()) == {
        "0": "fewer input channels per group than the rule's min_channels=8 (has 3)",
        "1": "excluded by name in the plan",
        "2": "depthwise (the rule has depthwise=no)",
        "3": "fewer output channels per input channel than the rule's min_expansion=4 (has 2)",
        "4": "grouped (the rule has grouped=no)",
        "5": "no rule for Linear layers",
    }
    assert Plan.parse("1x1:c=C").skipped(model())["3"] == (
        "its structure reduces nothing (c = C and n = N)"
    )
    assert Plan.parse("1x1:c=C").skipped(model())["1"] == "no rule for 3x3 convs"
    # every structurable layer is either planned or skipped, never both
    planned = plan.apply(model())
    assert set(planned).isdisjoint(plan.skipped(model()))
    assert set(planned) | set(plan.skipped(model())) == {"0", "1", "2", "3", "4", "5"}
