"""``tune --original`` tunes the original model's own convs: the functions that
``compile_model(structured=False)`` looks up in the log, not the structured build's again."""

from unittest import mock

import pytest

from tvm_structconv import tune
from tvm_structconv.build import compile_model
from tvm_structconv.cli import main
from tvm_structconv.frontend import load_model


def test_the_command_tunes_both_builds_with_original(exported_small_net, monkeypatch, capsys):
    calls = []

    def tune_model(imported, target, **options):
        calls.append(options["structured"])
        return mock.MagicMock(**{"table.return_value": "", "coverage_warning.return_value": None})

    monkeypatch.setattr(tune, "tune_model", tune_model)
    model = str(exported_small_net["onnx"])
    assert main(["tune", model, "--trials", "2"]) == 0
    assert calls == [True]
    assert main(["tune", model, "--trials", "2", "--original"]) == 0
    assert calls == [True, True, False]
    out = capsys.readouterr().out
    assert "structured:" in out and "original:" in out


@pytest.mark.slow
def test_tuning_the_original_writes_what_the_original_build_looks_up(exported_small_net, tmp_path):
    imported = load_model(exported_small_net["onnx"])
    result = tune.tune_model(
        imported,
        "x86",
        trials=6,
        structured=False,
        folder=tmp_path,
        trials_per_iter=2,
        progress=False,
        seed=0,
    )
    original = compile_model(imported, "x86", structured=False, tuning_logs=tmp_path)
    structured = compile_model(imported, "x86", structured=True, tuning_logs=tmp_path)
    # every task got a round: the original build's two convs and its classifier (a Linear as
    # a 1x1 conv); of the structured build only the classifier (an ordinary conv in both
    # builds) is in the log
    assert [task.trials > 0 for task in result.tasks] == [True] * 3
    assert len(original.tuned) == 3, original.notes
    assert len(structured.tuned) == 1, structured.notes
