"""aarch64 deployment checked under emulation: cross-compiled library, runner built against the
aarch64 TVM runtime (from the aarch64 wheels, cached), run with qemu-aarch64-static, compared
with torch. No timing is reported: under qemu it means nothing.

Every test here is ``needs_cross``: without the cross toolchain and qemu it is skipped with
the apt command that installs them (conftest.py); in CI, which installs them, it fails instead.
"""

import json

import numpy as np
import pytest
import torch

from tvm_structconv.build import compile_model
from tvm_structconv.cli import main
from tvm_structconv.deploy import deploy, run_bundle
from tvm_structconv.frontend import load_model
from tvm_structconv.runtime_libs import runtime_root

from small_nets import export_net, structured_net

ELF_MACHINE_AARCH64 = 183


@pytest.fixture(scope="module", autouse=True)
def aarch64_runtime():
    """Fetch the aarch64 TVM runtime once (the tools themselves: the ``needs_cross`` marker)."""
    return runtime_root("aarch64")


def _elf_machine(path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


@pytest.fixture(scope="module")
def default_pipeline_build():
    """The small net imported through torch.export and compiled for aarch64 by TVM's default
    CPU pipeline: ``(imported, compiled, x, torch's output)``."""
    model, x, manifest = structured_net()
    with torch.no_grad():
        expected = model(x).numpy()
    imported = load_model(model, x, manifest)
    # TVM's default CPU pipeline: checks the deployment path apart from the hand schedules
    compiled = compile_model(imported, "aarch64", schedules=False)
    return imported, compiled, x, expected


@pytest.mark.needs_cross
def test_aarch64_bundle_matches_torch_under_qemu(default_pipeline_build, tmp_path):
    imported, compiled, x, expected = default_pipeline_build
    bundle = deploy(compiled, imported, tmp_path / "bundle", [x.numpy()], [expected])
    assert bundle.runner is not None, bundle.build_hint
    for binary in (
        bundle.folder / "model.so",
        bundle.runner,
        bundle.folder / "lib" / "libtvm_runtime.so",
    ):
        assert _elf_machine(binary) == ELF_MACHINE_AARCH64, binary

    output = tmp_path / "out.bin"
    done = run_bundle(bundle.folder, output=output, repeat=1, warmup=0)
    assert done.returncode == 0, done.stdout + done.stderr
    got = np.fromfile(output, dtype=np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.needs_cross
def test_cli_deploy_check_under_qemu(tmp_path, capsys):
    """The shipped build (hand schedules included) through the command line, against onnxruntime."""
    model_path = export_net(tmp_path)
    bundle = tmp_path / "bundle"
    status = main(
        [
            "deploy",
            str(model_path),
            "--target",
            "aarch64",
            "-o",
            str(bundle),
            "--check",
            "--repeat",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "2 of 3 layers rewritten" in out and "OK: max error" in out
    assert "under qemu-aarch64-static" in out and "the timing means nothing" in out
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["arch"] == "aarch64" and meta["target"]["mtriple"] == "aarch64-linux-gnu"
    assert meta["sample"]["expected"] == "sample/expected.bin"


@pytest.mark.needs_cross
def test_cli_compile_for_aarch64_writes_an_aarch64_library(tmp_path, capsys):
    library = tmp_path / "net.so"
    model_path = export_net(tmp_path)
    assert main(["compile", str(model_path), "--target", "aarch64", "-o", str(library)]) == 0
    assert _elf_machine(library) == ELF_MACHINE_AARCH64
    assert "aarch64-linux-gnu" in capsys.readouterr().out


@pytest.mark.needs_cross
def test_without_the_aarch64_runtime_the_bundle_keeps_the_sources(
    default_pipeline_build, tmp_path, monkeypatch
):
    # an empty cache and no package index: the runtime wheels cannot be fetched
    monkeypatch.setenv("STRUCTCONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    imported, compiled, _, _ = default_pipeline_build
    bundle = deploy(compiled, imported, tmp_path / "bundle")
    assert bundle.runner is None
    assert "cannot download the aarch64 TVM runtime wheels" in bundle.build_hint
    assert "make TVM_ROOT=" in bundle.build_hint
    for name in ("structconv_run.cc", "Makefile", "model.so", "model.json"):
        assert (bundle.folder / name).is_file(), name
