"""Every kind of user error is one line on stderr and exit status 2, never a traceback.

One case per type listed here (not read from ``errors.USER_ERRORS``, so a type dropped from
that tuple fails its case), and a real bad ``--plan`` through ``structconv export``.
"""

import pytest
import tvm

from tvm_structconv import cli
from tvm_structconv.build import CompileError
from tvm_structconv.frontend import FrontendError
from tvm_structconv.manifest import ManifestError
from tvm_structconv.peers import PeerUnavailable
from tvm_structconv.plan import PlanError
from tvm_structconv.remote import RemoteError
from tvm_structconv.targets import TargetError
from tvm_structconv.toolchain import DeviceError, RunnerError, ToolchainError
from tvm_structconv.transform.structured_conv import StructureMismatchError
from tvm_structconv.tune import TuneError
from tvm_structconv.tuning_logs import TuningLogError

USER_ERROR_CASES = [
    FrontendError("model file not found: m.onnx"),
    ManifestError("m.json: 'format' must be 'structconv/1'"),
    PlanError("plan '' has no rule"),
    TargetError("unknown target 'tpu'"),
    StructureMismatchError("layer 'w': weights do not satisfy"),
    DeviceError("no CUDA device"),
    RunnerError("the runner failed"),
    ToolchainError("aarch64-linux-gnu-g++ not found"),
    PeerUnavailable("onnxruntime is not installed"),
    RemoteError("no server under key 'rpi4'"),
    TuneError("--trials must be positive"),
    TuningLogError("the tuning database cannot be read"),
    CompileError("m.onnx", tvm.target.Target("llvm"), "build", RuntimeError("boom")),
    FileNotFoundError(2, "No such file or directory", "out/m.so"),
]


def _one_line_error(capsys, status: int) -> str:
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("structconv: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("error", USER_ERROR_CASES, ids=lambda e: type(e).__name__)
def test_each_user_error_type_is_one_line_and_exit_2(monkeypatch, capsys, error):
    def fails(_args):
        raise error

    monkeypatch.setattr(cli, "cmd_models", fails)
    err = _one_line_error(capsys, cli.main(["models"]))
    assert str(error) in err


def test_a_bug_is_an_internal_error_with_exit_3(monkeypatch, capsys):
    def fails(_args):
        raise KeyError("oops")

    monkeypatch.setattr(cli, "cmd_models", fails)
    assert cli.main(["models"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("structconv: internal error: ") and "--debug" in err


@pytest.mark.parametrize(
    "plan, message",
    [
        ("3x3:q=1", "unknown option 'q'"),
        ("3x3:n", "option 'n' is not key=value"),
        ("conv:n=2", "kind must be HxW"),
        ("3x3:n=2,c=C/0", "needs a positive divisor"),
    ],
)
def test_a_bad_plan_is_one_line(tmp_path, capsys, plan, message):
    status = cli.main(["export", "resnet18", "--plan", plan, "-o", str(tmp_path)])
    assert message in _one_line_error(capsys, status)
    assert not list(tmp_path.iterdir()), "nothing is exported"
