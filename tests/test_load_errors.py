"""Files that cannot load say why and what to do, in one line: a .pt2 from another torch names
both versions, a torch.save pickle points to torch.export, an aarch64 library on x86 says so."""

import json
import zipfile

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from tvm_structconv.cli import main
from tvm_structconv.runtime_libs import host_arch
from tvm_structconv.toolchain import DeviceError, library_arch, load_library


def _one_error_line(capfd) -> str:
    err = capfd.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # torch's own warnings are silenced
    return err.strip()


def test_a_pt2_from_another_torch_names_both_versions(exported_small_net, tmp_path, capfd):
    old = tmp_path / "old.pt2"
    with (
        zipfile.ZipFile(exported_small_net["pt2"]) as source,
        zipfile.ZipFile(old, "w") as target,
    ):
        for info in source.infolist():
            data = source.read(info.filename)
            if "/models/" in info.filename and info.filename.endswith(".json"):
                program = json.loads(data)
                program.update(torch_version="2.3.1", schema_version={"major": 5, "minor": 0})
                data = json.dumps(program).encode()
            target.writestr(info, data)
    assert main(["verify", str(old)]) == 2
    ours = torch.__version__
    assert _one_error_line(capfd) == (
        f"structconv: error: {old} was exported with torch 2.3.1, and this torch {ours} cannot "
        f"load it; re-export it with torch {ours} (torch.export.export and torch.export.save)"
    )


@pytest.mark.parametrize("zipped", [True, False])
def test_a_torch_save_pickle_points_to_torch_export(tmp_path, capfd, zipped):
    path = tmp_path / "model.pt2"
    torch.save(torch.nn.Conv2d(3, 4, 3), path, _use_new_zipfile_serialization=zipped)
    assert main(["compile", str(path), "-o", str(tmp_path / "m.so")]) == 2
    assert _one_error_line(capfd) == (
        f"structconv: error: {path} is a torch.save pickle, not a torch.export program; export "
        "it with torch.export.export(model, args) and torch.export.save (or "
        "tvm_structconv.export.export)"
    )


def test_a_file_that_is_no_archive_says_so(tmp_path, capfd):
    path = tmp_path / "text.pt2"
    path.write_text("not a model")
    assert main(["verify", str(path)]) == 2
    assert _one_error_line(capfd).endswith("not a zip file); save it with torch.export.save")


def _elf_header(machine: int) -> bytes:
    """The first 20 bytes of a 64-bit little-endian shared object (ELF) for ``machine``."""
    identification = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # e_ident: 16 bytes
    return identification + (3).to_bytes(2, "little") + machine.to_bytes(2, "little")


def test_a_library_for_another_architecture_is_named(tmp_path):
    arm = tmp_path / "model.so"
    arm.write_bytes(_elf_header(183) + bytes(64))
    assert library_arch(arm) == "aarch64"
    if host_arch() != "aarch64":
        with pytest.raises(DeviceError) as info:
            load_library(arm)
        assert str(info.value) == (
            f"{arm} is an aarch64 library and cannot load on this {host_arch()} host; run it on "
            "the board, or here under qemu with its bundle's runner (structconv deploy --check)"
        )
    with pytest.raises(FileNotFoundError, match="no library at"):
        load_library(tmp_path / "missing.so")
    (tmp_path / "text.so").write_text("x")
    assert library_arch(tmp_path / "text.so") is None


def test_a_library_for_this_host_loads_and_runs(exported_small_net, tmp_path):
    library = tmp_path / "net.so"
    assert main(["compile", str(exported_small_net["onnx"]), "-o", str(library)]) == 0
    assert library_arch(library) == host_arch()
    x = exported_small_net["x"]
    got = relax.VirtualMachine(load_library(library), tvm.cpu())["main"](
        tvm.runtime.tensor(x.numpy())
    )
    assert np.asarray(got.numpy()).shape == (1, 5)
