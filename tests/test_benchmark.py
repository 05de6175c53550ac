"""structconv bench: rows, peers, JSON with raw samples, plot, and unavailable rows with reasons.

TVM against onnxruntime, timed in interleaved rounds with every row of the report checked, is
the README's bench step (tests/test_readme_walk.py); rows a peer cannot run are
tests/test_bench_stability.py's."""

import json

import pytest

from tvm_structconv.benchmark import run_benchmark
from tvm_structconv.cli import main
from tvm_structconv.peers import PeerUnavailable
from tvm_structconv.targets import TargetError


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
            "--targets",
            "x86_64",  # an alias of this host's x86: its builds are timed here, as x86 rows
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
