"""Plan files: per-layer plans as JSON (what ``structconv plan`` writes), read back and used."""

import json
from fractions import Fraction

import pytest
import torch.nn as nn

from tvm_structconv.cli import main
from tvm_structconv.models import create_structured
from tvm_structconv.plan import PLAN_FORMAT, Plan, PlanError, Rule
from tvm_structconv.structure import Structure


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 32, 1), nn.Linear(32, 10))


def test_a_per_layer_plan_survives_a_file_and_structures_its_layers(tmp_path):
    plan = Plan(layers={"0": (8, (2, 2)), "1": (4, (1, 1)), "2": None})
    path = tmp_path / "plan.json"
    plan.save(path, info={"predicted_speedup": 1.6})
    data = json.loads(path.read_text())
    assert data["format"] == PLAN_FORMAT and data["info"] == {"predicted_speedup": 1.6}
    assert data["layers"] == {"0": {"c": 8, "n": [2, 2]}, "1": {"c": 4, "n": [1, 1]}, "2": None}
    loaded = Plan.load(path)
    assert loaded == plan
    assert Plan.from_argument(str(path)) == plan
    assert loaded.apply(model()) == {"0": Structure(8, 3, 8, 2), "1": Structure(16, 1, 4, 1)}
    assert loaded.skipped(model())["2"] == "excluded by name in the plan"


@pytest.mark.parametrize(
    "text",
    [
        "3x3:c=C,n=2x2",
        "3x3:c=C/2,n=2x2,min_channels=16;1x1:c=C/4,min_expansion=4",
        "linear:c=8;1x7:c=C,n=1x5,depthwise=yes,grouped=yes",
    ],
)
def test_rules_written_as_text_parse_back_to_the_same_rules(text):
    plan = Plan.parse(text)
    assert Plan.parse(";".join(rule.to_text() for rule in plan.rules)) == plan
    assert Plan.from_json(plan.to_json()) == plan


def test_a_fraction_without_plan_syntax_is_refused():
    with pytest.raises(PlanError, match="only C/k"):
        Rule((3, 3), channel_fraction=Fraction(3, 4)).to_text()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not JSON"),
        ('{"format": "other"}', "not a plan file"),
        (f'{{"format": "{PLAN_FORMAT}"}}', "no rule and no layer"),
        (f'{{"format": "{PLAN_FORMAT}", "layers": {{"a": {{"c": 0, "n": 2}}}}}}', "positive"),
        (f'{{"format": "{PLAN_FORMAT}", "layers": {{"a": {{"c": 2}}}}}}', "or null"),
        (f'{{"format": "{PLAN_FORMAT}", "layers": {{"a": {{"c": 2, "n": "2"}}}}}}', "n must"),
        (f'{{"format": "{PLAN_FORMAT}", "rules": "3x3:q=1"}}', "unknown option"),
        (f'{{"format": "{PLAN_FORMAT}", "extra": 1, "rules": "3x3:c=C"}}', "unknown field"),
    ],
)
def test_a_bad_plan_file_names_the_file_and_the_fault(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=message):
        Plan.load(path)


def test_a_missing_plan_file_and_a_misfit_entry_are_plan_errors(tmp_path):
    with pytest.raises(PlanError, match="cannot read plan file"):
        Plan.from_argument(str(tmp_path / "missing.json"))
    with pytest.raises(PlanError, match="layer '0' does not fit"):
        Plan(layers={"0": (9, (2, 2))}).apply(model())


def test_export_takes_a_plan_file(tmp_path, capsys):
    plan = Plan(layers={"layer1.0.conv1": (64, (2, 2)), "layer4.1.conv2": (256, (3, 3))})
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "out"
    code = main(
        ["export", "resnet18", "--plan", str(tmp_path / "plan.json"), "-o", str(out)]
        + ["--image-size", "32"]
    )
    assert code == 0
    assert "2 layers structured" in capsys.readouterr().out
    built = create_structured("resnet18", plan=plan, image_size=32)
    assert built.structures == {
        "layer1.0.conv1.weight": Structure(64, 3, 64, 2),
        "layer4.1.conv2.weight": Structure(512, 3, 256, 3),
    }
    assert (out / "resnet18.onnx").is_file()
