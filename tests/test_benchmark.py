"""structconv bench: rows, peers, JSON with raw samples, plot, and unavailable rows with reasons."""

import json

import pytest

from tvm_structconv.benchmark import run_benchmark
from tvm_structconv.cli import main
from tvm_structconv.peers import PeerUnavailable
from tvm_structconv.targets import TargetError


@pytest.mark.slow
def test_bench_measures_tvm_and_peers(exported_small_net, tmp_path):
    onnx_path = str(exported_small_net["onnx"])
    report = run_benchmark(
        onnx_path,
        targets=["x86"],
        peers=["onnxruntime", "torch"],
        threads=1,
        repeat=3,
        min_repeat_ms=5,
        rounds=2,
        workdir=str(tmp_path),
    )
    ours = report.row("x86", "tvm", "structured")
    baseline = report.row("x86", "tvm", "original")
    assert ours.latency is not None and baseline.latency is not None
    assert len(ours.latency.samples_ms) == 6  # 2 interleaved rounds of 3
    assert ours.macs < baseline.macs and ours.params < baseline.params
    onnx_rows = [report.row("host", "onnxruntime", v) for v in ("original", "structured")]
    assert all(row.latency is not None for row in onnx_rows)
    torch_row = report.row("host", "torch", "original")
    assert torch_row.latency is None and "torch needs a torch.export program" in torch_row.note
    lines = report.ratios()
    ort = onnx_rows[0]
    if ours.trusted and ort.trusted:
        assert any("faster than onnxruntime (host)" in line for line in lines), lines
    else:  # a disturbed round (microsecond kernels): the line says why instead of a number
        unstable = "structured tvm (x86)" if not ours.trusted else "onnxruntime (host)"
        assert any(f"no ratio with {unstable}: its samples are unstable" in line for line in lines)
        assert not any("faster than onnxruntime" in line for line in lines)
    table = report.format()
    assert "n/a" in table and "median ms" in table


@pytest.mark.needs_cross
def test_bench_builds_for_aarch64_are_timed_on_their_device(exported_small_net, tmp_path):
    report = run_benchmark(
        str(exported_small_net["onnx"]),
        targets=["aarch64"],
        peers=[],
        threads=1,
        repeat=3,
        min_repeat_ms=5,
        rounds=1,
        workdir=str(tmp_path),
    )
    for variant in ("original", "structured"):
        arm = report.row("aarch64", "tvm", variant)
        assert arm.latency is None and "use --rpc-tracker" in arm.note
    assert (tmp_path / "aarch64-tvm-structured.so").is_file()
    assert "n/a" in report.format()


def test_bench_command_writes_json_and_plot(exported_small_net, tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    status = main(
        [
            "bench",
            str(exported_small_net["pt2"]),
            "--peers",
            "torch",
            "--repeat",
            "2",
            "--rounds",
            "1",
            "--threads",
            "1",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "--workdir",
            str(tmp_path / "work"),
        ]
    )
    assert status == 0
    data = json.loads(out_json.read_text())
    rows = {(r["target"], r["runtime"], r["variant"]): r for r in data["rows"]}
    assert len(rows[("x86", "tvm", "structured")]["samples_ms"]) == 2
    assert rows[("host", "torch", "original")]["median_ms"] > 0
    assert "built-in models" in rows[("host", "torch", "structured")]["note"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_targets_and_peers(exported_small_net, capsys):
    with pytest.raises(PeerUnavailable, match="unknown peer 'tflite'"):
        run_benchmark(str(exported_small_net["onnx"]), peers=["tflite"])
    with pytest.raises(TargetError, match="unknown target 'tpu'"):
        run_benchmark(str(exported_small_net["onnx"]), targets=["tpu"])
    assert (
        main(
            [
                "bench",
                str(exported_small_net["onnx"]),
                "--rpc-tracker",
                "127.0.0.1:1",
                "--device-key",
                "x",
            ]
        )
        == 2
    )
    assert "cannot reach the RPC tracker" in capsys.readouterr().err
