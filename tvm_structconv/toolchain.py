"""Host tools the edge targets need, and whether a build can run on this host.

* aarch64 libraries and runners are built with Debian's cross toolchain
  (``aarch64-linux-gnu-g++``) and run here only under ``qemu-aarch64-static``;
* a CUDA build runs only where ``tvm.cuda()`` exists.

Every missing tool is a :class:`ToolchainError` whose one-line message says what to install;
a build that cannot run here is a :class:`DeviceError` that says where it can run.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, List, Optional, Union

import tvm
from tvm.support import cc

from tvm_structconv.runtime_libs import host_arch

__all__ = [
    "CROSS_PACKAGES",
    "DeviceError",
    "QEMU_PACKAGE",
    "RunnerError",
    "ToolchainError",
    "check_runnable",
    "cross_cxx",
    "emulator",
    "export_compiler",
    "library_arch",
    "load_library",
    "target_arch",
]

#: ELF ``e_machine`` values of the architectures a library may be built for.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv64"}

#: Debian packages of the aarch64 cross toolchain.
CROSS_PACKAGES = "gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"
#: Debian package of the user-mode emulator.
QEMU_PACKAGE = "qemu-user-static"


class ToolchainError(OSError):
    """A tool this step needs is not installed; the message names the packages."""


class DeviceError(RuntimeError):
    """A build that cannot run on this host; the message says where it can."""


class RunnerError(RuntimeError):
    """A deployment runner that cannot be built or run; the message holds the tool's last lines."""


def target_arch(target: tvm.target.Target) -> str:
    """The CPU architecture the host code of ``target`` is for (``x86_64``, ``aarch64``).

    A CUDA target's host code is for its ``host`` target (this machine's CPU by default).
    """
    if target.kind.name != "llvm":
        host = target.host
        return target_arch(host) if host is not None and host.kind.name == "llvm" else host_arch()
    triple = str(target.attrs.get("mtriple", "") or "")
    return triple.split("-")[0] if triple else host_arch()


def cross_cxx(arch: str) -> Optional[str]:
    """The C++ compiler for ``arch``: ``None`` for this host's (TVM's default), else the cross one.

    Raises
    ------
    ToolchainError
        If ``arch`` needs a cross compiler that is not installed.
    """
    if arch == host_arch():
        return None
    name = f"{arch}-linux-gnu-g++"
    if shutil.which(name) is None:
        packages = CROSS_PACKAGES if arch == "aarch64" else f"g++-{arch}-linux-gnu"
        raise ToolchainError(
            f"cross-compiling for {arch} needs {name}, which is not installed; install it with "
            f"`apt-get install -y {packages}`"
        )
    return name


def export_compiler(target: tvm.target.Target) -> Optional[Callable]:
    """The ``fcompile`` for ``export_library`` of a build for ``target`` (``None``: the default).

    Raises
    ------
    ToolchainError
        If the target's architecture needs a cross compiler that is not installed.
    """
    compiler = cross_cxx(target_arch(target))
    return None if compiler is None else cc.cross_compiler(compiler)


def emulator(arch: str) -> List[str]:
    """The command prefix that runs an ``arch`` program here (empty for this host's own).

    Raises
    ------
    ToolchainError
        If ``qemu-<arch>-static`` is not installed.
    """
    if arch == host_arch():
        return []
    name = f"qemu-{arch}-static"
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(
            f"running {arch} programs on this {host_arch()} host needs {name}, which is not "
            f"installed; install it with `apt-get install -y {QEMU_PACKAGE}`"
        )
    # Debian's cross toolchain keeps the target's C/C++ libraries here: qemu's sysroot
    return [path, "-L", f"/usr/{arch}-linux-gnu"]


def check_runnable(target: tvm.target.Target) -> None:
    """Raise :class:`DeviceError` unless a build for ``target`` can run in this process."""
    arch = target_arch(target)
    if target.kind.name == "llvm" and arch != host_arch():
        raise DeviceError(
            f"an {arch} library cannot run on this {host_arch()} host; use `structconv deploy` "
            "and run it on the board or under qemu"
        )
    if target.kind.name == "cuda" and not tvm.cuda().exist:
        raise DeviceError("no CUDA device; use --target x86 or run on a GPU machine")


def library_arch(path: Union[str, os.PathLike]) -> Optional[str]:
    """The architecture a shared library is built for (``x86_64``, ``aarch64``), read from its
    ELF header; ``None`` for a file that is not ELF or of an unknown machine."""
    with open(path, "rb") as file:
        header = file.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return _ELF_MACHINES.get(int.from_bytes(header[18:20], "little" if header[5] == 1 else "big"))


def load_library(path: Union[str, os.PathLike]) -> tvm.runtime.Module:
    """``tvm.runtime.load_module(path)`` for a library built by ``compile`` or ``deploy``.

    Raises
    ------
    DeviceError
        If the library is for another architecture than this host's (TVM's own message for
        that is "cannot open shared object file" for a file that exists).
    FileNotFoundError
        If there is no such file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no library at {os.fspath(path)}")
    arch = library_arch(path)
    if arch is not None and arch != host_arch():
        raise DeviceError(
            f"{os.fspath(path)} is an {arch} library and cannot load on this {host_arch()} host; "
            "run it on the board, or here under qemu with its bundle's runner "
            "(structconv deploy --check)"
        )
    return tvm.runtime.load_module(os.fspath(path))
