"""Deployment bundles on this host (x86): contents, the C++ runner run natively, and the clear
errors of builds that cannot run here or tools that are missing."""

import json

import numpy as np
import pytest
import torch
import tvm

from tvm_structconv.build import compile_model
from tvm_structconv.cli import main
from tvm_structconv.deploy import deploy, run_bundle
from tvm_structconv.frontend import load_model
from tvm_structconv.runtime_libs import host_arch
from tvm_structconv.targets import make_target
from tvm_structconv.toolchain import DeviceError, ToolchainError, emulator

from small_nets import export_net, structured_net

pytestmark = pytest.mark.skipif(host_arch() != "x86_64", reason="these tests assume an x86-64 host")


@pytest.fixture(scope="module")
def net():
    model, x, manifest = structured_net()
    with torch.no_grad():
        expected = model(x).numpy()
    return load_model(model, x, manifest), x.numpy(), expected


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return export_net(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def x86_bundle(net, tmp_path_factory):
    """A bundle for this host with its runner built (TVM's default CPU pipeline)."""
    imported, x, expected = net
    compiled = compile_model(imported, "x86", schedules=False)
    return deploy(compiled, imported, tmp_path_factory.mktemp("x86") / "bundle", [x], [expected])


def test_x86_bundle_runs_natively_and_matches_torch(net, x86_bundle, tmp_path):
    _, _, expected = net
    bundle = x86_bundle
    assert bundle.runner is not None and bundle.runner.is_file(), bundle.build_hint
    for name in (
        "model.so",
        "model.json",
        "structconv_run.cc",
        "Makefile",
        "lib/libtvm_runtime.so",
        "lib/libtvm_ffi.so",
        "sample/input0.bin",
        "sample/expected.bin",
    ):
        assert (bundle.folder / name).is_file(), name

    output = tmp_path / "out.bin"
    done = run_bundle(
        bundle.folder, output=output, expect=bundle.folder / "sample/expected.bin", repeat=5
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout and "latency: median" in done.stdout and "over 5 runs" in done.stdout
    got = np.fromfile(output, dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_model_json_describes_the_bundle(net, tmp_path):
    imported, x, _ = net
    compiled = compile_model(imported, "x86", schedules=False)
    bundle = deploy(compiled, imported, tmp_path / "bundle", [x], build=False)
    assert bundle.runner is None and "make TVM_ROOT=" in bundle.build_hint
    meta = json.loads((bundle.folder / "model.json").read_text())
    assert meta["format"] == "structconv-bundle/1" and meta["library"] == "model.so"
    assert meta["arch"] == "x86_64" and meta["target"]["kind"] == "llvm"
    assert meta["inputs"] == [
        {"name": imported.inputs[0].name, "shape": [1, 4, 8, 8], "dtype": "float32"}
    ]
    assert meta["outputs"] == [{"name": "output0", "shape": [1, 5], "dtype": "float32"}]
    layers = {layer["name"]: layer for layer in meta["rewrite"]["layers"]}
    assert meta["rewrite"]["rewritten"] == 2
    assert layers["0.weight"]["rewritten"]
    assert layers["0.weight"]["structure"]["reduced_channels"] == 2
    assert not layers["5.weight"]["rewritten"]
    assert meta["manifest"]["layers"]["3.weight"]["reduced_kernel_size"] == [2, 2]
    assert meta["sample"] == {"inputs": ["sample/input0.bin"]}
    assert meta["tvm"]["apache-tvm"].startswith("0.27")


def test_runner_rejects_an_input_of_the_wrong_size(x86_bundle, tmp_path):
    short = tmp_path / "short.bin"
    short.write_bytes(b"\0" * 12)
    done = run_bundle(x86_bundle.folder, inputs=[short], repeat=1)
    assert done.returncode == 2
    assert "has 12 bytes, expected 1024" in done.stderr


def test_an_aarch64_build_cannot_run_here(net):
    imported, x, _ = net
    compiled = compile_model(imported, "aarch64", schedules=False)
    with pytest.raises(
        DeviceError,
        match="an aarch64 library cannot run on this x86_64 host; "
        "use `structconv deploy` and run it on the board or under qemu",
    ):
        compiled.run(x)


def test_verify_for_aarch64_is_a_one_line_error(onnx_model, capsys):
    assert main(["verify", str(onnx_model), "--target", "aarch64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("structconv: error: an aarch64 library cannot run") and "\n" not in err


@pytest.mark.skipif(tvm.cuda().exist, reason="this host has a CUDA device")
def test_a_cuda_build_without_a_gpu_says_so(net, onnx_model, capsys):
    imported, x, _ = net
    compiled = compile_model(imported, "cuda")
    message = "no CUDA device; use --target x86 or run on a GPU machine"
    with pytest.raises(DeviceError, match=message):
        compiled.run(x)
    assert main(["verify", str(onnx_model), "--target", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_deploy_is_for_cpu_targets(onnx_model, tmp_path, capsys):
    assert main(["deploy", str(onnx_model), "--target", "cuda", "-o", str(tmp_path / "b")]) == 2
    assert "deploy builds bundles for CPU targets" in capsys.readouterr().err


def test_missing_cross_compiler_names_the_packages(onnx_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no aarch64-linux-gnu-g++ there
    assert (
        main(["compile", str(onnx_model), "--target", "aarch64", "-o", str(tmp_path / "m.so")]) == 2
    )
    err = capsys.readouterr().err
    assert "aarch64-linux-gnu-g++, which is not installed" in err
    assert "apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu" in err


def test_missing_qemu_names_the_package(tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text(json.dumps({"arch": "aarch64"}))
    (bundle / "structconv_run").write_bytes(b"")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        ToolchainError,
        match="qemu-aarch64-static, which is not installed; "
        "install it with `apt-get install -y qemu-user-static`",
    ):
        run_bundle(bundle)
    assert emulator(host_arch()) == []


def test_target_arch_of_the_named_targets():
    from tvm_structconv.toolchain import target_arch

    assert target_arch(make_target("aarch64")) == "aarch64"
    assert target_arch(make_target("x86")) == "x86_64"
    assert target_arch(make_target("cuda")) == "x86_64"  # its host code


def test_runner_reports_a_mismatch(net, x86_bundle, tmp_path):
    _, _, expected = net
    wrong = tmp_path / "wrong.bin"
    (expected + 1.0).astype(np.float32).tofile(wrong)
    done = run_bundle(x86_bundle.folder, expect=wrong, repeat=1)
    assert done.returncode == 1 and "MISMATCH" in done.stdout
