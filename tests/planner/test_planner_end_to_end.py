"""The planner end to end on a small net: plan, plan file, compiled planned build exact against
torch; and its user errors, each one line."""

import json
import re

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from tvm_structconv.build import flatten_outputs
from tvm_structconv.cli import main
from tvm_structconv.nn import structurize
from tvm_structconv.plan import Plan, PlanError
from tvm_structconv.planner.source import ModelSource

SUMMARY_END = re.compile(r"predicted \d+\.\d\dx, measured \d+\.\d\dx$")


def one_line_error(capsys, status):
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("structconv: error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_plan_with_calibration_then_compile_the_planned_pt2_exactly(
    planner_pt2, planner_net, tmp_path, capsys
):
    path, x = planner_pt2
    model, _ = planner_net
    plan_file, plot = tmp_path / "plan.json", tmp_path / "frontier.png"
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.random.default_rng(1).standard_normal((4, 3, 16, 16)))
    status = main(
        ["plan", str(path), "--speedup", "1.05", "-o", str(plan_file), "--rounds", "3"]
        + ["--plot", str(plot), "--calibration", str(calibration)]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert SUMMARY_END.search(out.strip().splitlines()[-1]), out
    assert "(sensitivity)" in out
    assert plot.stat().st_size > 0
    info = json.loads(plan_file.read_text())["info"]
    assert info["predicted_speedup"] >= 1.05 and info["measured_speedup"] > 0
    assert info["predicted_ms"] <= info["budget_ms"] and info["damage_kind"] == "sensitivity"
    plan = Plan.load(plan_file)
    assert set(plan.layers) == {"stem", "down", "mix", "head"}
    assert any(entry is not None for entry in plan.layers.values())

    library = tmp_path / "net.so"
    assert main(["compile", str(path), "--plan", str(plan_file), "-o", str(library)]) == 0
    rewritten = capsys.readouterr().out
    structured = [name for name, entry in plan.layers.items() if entry is not None]
    assert all(f"{name}.weight" in rewritten for name in structured)
    device = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), device)
    (got,) = flatten_outputs(vm["main"](tvm.runtime.tensor(x.numpy(), device)))
    projected, _ = structurize(model, plan)
    with torch.no_grad():
        expected = projected(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    # the table is cached now: a budget beyond reach is refused quickly, in one line
    status = main(["plan", str(path), "--speedup", "50", "--rounds", "1"])
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("[plan] ") for line in lines[:-1]), lines  # progress, then
    err = lines[-1]  # the error in one line
    assert (
        err.startswith("structconv: error: ")
        and "cannot be met" in err
        and re.search(r"fastest reachable latency is [0-9.e-]+ ms", err)
    )


@pytest.mark.parametrize(
    "budget, message",
    [
        (["--speedup", "0"], "--speedup must be a number >= 1"),
        (["--speedup", "0.5"], "--speedup must be a number >= 1"),
        (["--speedup", "nan"], "--speedup must be a number >= 1"),
        (["--latency-ms", "-1"], "--latency-ms must be a positive number"),
        (["--latency-ms", "inf"], "--latency-ms must be a positive number"),
    ],
)
def test_a_bad_budget_is_one_line(capsys, budget, message):
    assert message in one_line_error(capsys, main(["plan", "resnet18", *budget]))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--target", "tpu"], "unknown target 'tpu'"),
        (["--target", "cuda"], "cuda is not supported yet"),
        (["--rpc-tracker", "127.0.0.1:9"], "--rpc-tracker needs --device-key"),
        (["--rpc-tracker", "nonsense", "--device-key", "k"], "HOST:PORT"),
    ],
)
def test_a_bad_target_or_device_is_one_line(capsys, arguments, message):
    status = main(["plan", "resnet18", "--speedup", "1.5", *arguments])
    assert message in one_line_error(capsys, status)


def test_an_unknown_model_is_one_line(capsys, tmp_path):
    status = main(["plan", "no_such_model", "--speedup", "1.5"])
    assert "neither a built-in model" in one_line_error(capsys, status)


def test_compile_plan_matches_rules_to_a_files_weights_by_shape(planner_pt2, planner_net):
    path, _ = planner_pt2
    model, x = planner_net
    rules = Plan.parse("3x3:n=2,c=C,min_channels=16;1x1:c=C/2;linear:c=C/4")
    from_file = ModelSource(path).plan_structures(rules)
    from_module = ModelSource(model, x).plan_structures(rules)
    assert from_file == from_module
    assert sorted(from_file) == ["down.weight", "head.weight", "mix.weight"]
    with pytest.raises(PlanError, match="does not have: nowhere"):
        ModelSource(path).plan_structures(Plan(layers={"nowhere": None}))


def test_help_lists_plan(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "plan" in capsys.readouterr().out
