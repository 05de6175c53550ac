"""The README's "Your own model" walk, run as written: its script trains, structurizes and
exports a small model, then every command of its command block runs in the same folder and
prints what the README says it prints."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tvm_structconv import benchmark
from tvm_structconv.benchmark import run_benchmark
from tvm_structconv.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- walk: marker -->`` in the README."""
    text = README.read_text()
    found = re.search(rf"<!-- walk: {re.escape(marker)} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert found, f"README has no code block after <!-- walk: {marker} -->"
    return found.group(1)


def commands() -> dict:
    """The command block's lines, keyed by subcommand (``python``, ``compile``, ``verify`` …)."""
    lines = [shlex.split(line) for line in readme_block("commands").splitlines() if line.strip()]
    return {argv[1] if argv[0] == "structconv" else argv[0]: argv for argv in lines}


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """A folder where the README's script has run (``python own_model.py``): its stdout."""
    folder = tmp_path_factory.mktemp("walk")
    (folder / "own_model.py").write_text(readme_block("own_model.py") + "\n")
    argv = commands()["python"]
    assert argv == ["python", "own_model.py"]
    done = subprocess.run(
        [sys.executable, *argv[1:]], cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, done.stdout


def run(command: str, folder: Path, monkeypatch, capsys) -> str:
    """Run the README's ``structconv <command> …`` line in ``folder``; its stdout."""
    argv = commands()[command]
    assert argv[0] == "structconv"
    monkeypatch.chdir(folder)
    assert main(argv[1:]) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_the_script_exports_and_the_build_matches_torch(walk, monkeypatch, capsys):
    folder, out = walk
    assert re.search(r"^largest residual after training: \d\.\d{3}$", out, re.M)
    assert "structured: 0.weight, 3.weight, 6.weight" in out
    assert {"mynet.onnx", "mynet.pt2", "mynet.manifest.json"} <= {p.name for p in folder.iterdir()}
    compiled = run("compile", folder, monkeypatch, capsys)
    assert "3 of 4 layers rewritten; conv/linear MACs 3,981,632 -> 1,769,792 (2.25x)" in compiled
    assert (folder / "mynet.so").is_file()
    verified = run("verify", folder, monkeypatch, capsys)
    assert "(3 layers rewritten)" in verified
    assert verified.rstrip().endswith("OK: both builds match torch within 1.0e-03")


@pytest.mark.slow
def test_the_bench_step_prints_a_row_per_build_and_peer(walk, monkeypatch, capsys):
    # the one run of `structconv bench` that times TVM and a peer (tests/test_benchmark.py has
    # the cheaper ones): the report behind the printed table is checked here too
    reports = []

    def spy(*args, **kwargs):
        reports.append(run_benchmark(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(benchmark, "run_benchmark", spy)
    folder, _ = walk
    out = run("bench", folder, monkeypatch, capsys)
    for runtime in ("x86     tvm ", "host    onnxruntime "):
        assert sum(line.startswith(runtime) for line in out.splitlines()) == 2
    # a headline only from stable rows; otherwise the line that says why there is none
    assert re.search(r"faster than onnxruntime \(host\)|no ratio with .*unstable", out)
    assert (folder / "mynet-bench.png").read_bytes()[:4] == b"\x89PNG"

    (report,) = reports
    argv = commands()["bench"]
    rounds = int(argv[argv.index("--rounds") + 1])
    ours = report.row("x86", "tvm", "structured")
    baseline = report.row("x86", "tvm", "original")
    assert ours.latency is not None and baseline.latency is not None
    # the README's interleaved rounds of bench's default 10 samples each, merged
    assert len(ours.latency.samples_ms) == len(baseline.latency.samples_ms) == rounds * 10
    assert ours.macs < baseline.macs and ours.params < baseline.params
    ort = report.row("host", "onnxruntime", "original")
    assert ort.latency is not None
    assert report.row("host", "onnxruntime", "structured").latency is not None
    lines = report.ratios()
    if ours.trusted and ort.trusted:
        assert any("faster than onnxruntime (host)" in line for line in lines), lines
    else:  # a disturbed round (microsecond kernels): the line says why instead of a number
        unstable = "structured tvm (x86)" if not ours.trusted else "onnxruntime (host)"
        assert any(f"no ratio with {unstable}: its samples are unstable" in line for line in lines)
        assert not any("faster than onnxruntime" in line for line in lines)
    assert "median ms" in out and all(line in out for line in lines)


@pytest.mark.slow
@pytest.mark.needs_cross
def test_the_deploy_step_runs_the_bundle_under_qemu(walk, monkeypatch, capsys):
    folder, _ = walk
    out = run("deploy", folder, monkeypatch, capsys)
    assert "wrote mynet-arm (aarch64: model.so, model.json, runner sources, sample)" in out
    assert "OK: max error relative to the expected output's magnitude" in out
    assert '"mcpu": "cortex-a76"' in (folder / "mynet-arm" / "model.json").read_text()
