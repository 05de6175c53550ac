"""The structconv command end to end: compile, verify, export, demo and its one-line errors."""

import json
import re

import numpy as np
import onnxruntime
import pytest
import tvm
from tvm import relax

from tvm_structconv.cli import main
from tvm_structconv.manifest import LayerSpec, Manifest
from tvm_structconv.targets import make_target, target_key
from tvm_structconv.tuning_logs import has_database


@pytest.fixture(scope="module")
def exported(exported_small_net):
    return exported_small_net["folder"], exported_small_net["x"]


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for command in ("demo", "models", "export", "compile", "verify", "deploy", "tune", "bench"):
        assert command in usage


def test_compile_writes_a_loadable_library(exported, tmp_path, capsys):
    folder, x = exported
    library = tmp_path / "net.so"
    assert main(["compile", str(folder / "net.onnx"), "-o", str(library)]) == 0
    out = capsys.readouterr().out
    assert "2 of 3 layers rewritten" in out and "manifest: ONNX metadata" in out
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    session = onnxruntime.InferenceSession(
        str(folder / "net.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, oracle", [("net.onnx", "onnxruntime"), ("net.pt2", "torch")])
def test_verify_compares_both_builds_with_the_oracle(exported, capsys, name, oracle):
    folder, _ = exported
    assert main(["verify", str(folder / name)]) == 0
    out = capsys.readouterr().out
    assert f"original   vs {oracle}" in out and f"structured vs {oracle}" in out
    assert "(2 layers rewritten)" in out and out.rstrip().endswith("within 1.0e-03")


def test_detect_finds_structures_without_a_manifest(exported, tmp_path, capsys):
    folder, _ = exported
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"format": "structconv/1", "layers": {}}))
    assert (
        main(
            [
                "compile",
                str(folder / "net.pt2"),
                "--manifest",
                str(empty),
                "-o",
                str(tmp_path / "a.so"),
            ]
        )
        == 0
    )
    assert "0 of 3 layers rewritten" in capsys.readouterr().out
    assert main(["compile", str(folder / "net.pt2"), "--detect", "-o", str(tmp_path / "b.so")]) == 0
    assert "rewritten (matched by value)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["compile", "missing.onnx", "-o", "x.so"], "model file not found: missing.onnx"),
        (
            ["compile", "{folder}/net.onnx", "--target", "tpu", "-o", "x.so"],
            "unknown target 'tpu'; known targets: aarch64, cuda, x86",
        ),
        (
            ["verify", "{folder}/net.pt2", "--manifest", "{folder}/wrong.json"],
            "layer '0.weight': weights do not satisfy",
        ),
        (
            ["verify", "{folder}/net.pt2", "--manifest", "{folder}/broken.json"],
            "broken.json: not valid JSON",
        ),
        (["verify", "{folder}/net.txt"], "unknown model kind '.txt'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(exported, capsys, arguments, message):
    folder, _ = exported
    Manifest({"0.weight": LayerSpec(1, (2, 2))}).save(folder / "wrong.json")
    (folder / "broken.json").write_text("{")
    (folder / "net.txt").write_text("")
    status = main([argument.format(folder=folder) for argument in arguments])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("structconv: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_demo_runs_small(tmp_path, capsys, monkeypatch):
    from tvm_structconv import tuning_logs

    # no tuning log anywhere (the user's folder empty, none shipped): hand schedules only
    monkeypatch.setenv("STRUCTCONV_TUNING_LOGS", str(tmp_path / "logs"))
    monkeypatch.setattr(tuning_logs, "shipped_logs_root", lambda: tmp_path / "shipped")
    status = main(
        ["demo", "--image-size", "32", "--repeat", "2", "--rounds", "1", "--workdir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "16 of 21 conv/linear layers rewritten (16 through the .pt2 frontend)" in out
    assert "speedup" in out and "checked against onnxruntime" in out
    for label in ("original", "structured"):
        assert f"{label}: hand schedules (the tuning log of this CPU" in out
    assert "tuned schedules" not in out
    assert (tmp_path / "resnet18.onnx").is_file() and (
        tmp_path / "resnet18.manifest.json"
    ).is_file()


@pytest.mark.slow
def test_tune_then_compile_applies_the_log(exported, tmp_path, capsys):
    folder, x = exported
    logs = tmp_path / "logs"
    assert (
        main(
            [
                "tune",
                str(folder / "net.onnx"),
                "--trials",
                "4",
                "--trials-per-iter",
                "4",
                "--tuning-logs",
                str(logs),
                "--seed",
                "0",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = captured.out
    records = re.search(r"database 0 -> (\d+) records", out)
    assert "structured:" in out and records is not None and int(records.group(1)) >= 4
    # --tuning-logs is a root, like $STRUCTCONV_TUNING_LOGS: the records go to its CPU folder
    database = logs / target_key(make_target("x86"))
    assert f"into {database}\n" in captured.err and has_database(database)
    # 4 trials of 4 per round cannot reach all of the net's three tasks: the warning counts
    # the table's rows without a trial and names the budget that reaches them
    untried = sum(1 for line in out.splitlines() if re.match(r"\S+\s+1\s+0\s+n/a$", line))
    assert untried >= 1 and (
        f"structconv: warning: {untried} of 3 tasks got no trial (the budget ran out first); "
        "--trials 12 (tasks x --trials-per-iter 4) reaches every task" in captured.err
    )
    library = tmp_path / "net.so"
    assert (
        main(["compile", str(folder / "net.onnx"), "-o", str(library), "--tuning-logs", str(logs)])
        == 0
    )
    assert f"tuning log {database}: tuned schedules for" in capsys.readouterr().out
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    session = onnxruntime.InferenceSession(
        str(folder / "net.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert main(["compile", str(folder / "net.onnx"), "-o", str(library), "--no-logs"]) == 0
    assert "tuning log" not in capsys.readouterr().out
    assert main(["tune", str(folder / "net.onnx"), "--target", "cuda", "--trials", "4"]) == 2
    assert "tuning is implemented for CPU" in capsys.readouterr().err


def test_a_corrupted_tuning_database_is_one_line(exported_small_net, tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "database_workload.json").write_text('["not a workload"\n')
    (logs / "database_tuning_record.json").write_text("{{{\n")
    status = main(
        [
            "compile",
            str(exported_small_net["onnx"]),
            "--tuning-logs",
            str(logs),
            "-o",
            str(tmp_path / "net.so"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"structconv: error: the tuning database in {logs} cannot be read (")
    assert err.rstrip().endswith("move it away and tune again, or compile with --no-logs")


def test_debug_shows_the_traceback(exported_small_net, tmp_path):
    from tvm_structconv.targets import TargetError

    with pytest.raises(TargetError, match="unknown target 'tpu'"):
        main(
            [
                "--debug",
                "compile",
                str(exported_small_net["onnx"]),
                "--target",
                "tpu",
                "-o",
                str(tmp_path / "x.so"),
            ]
        )
