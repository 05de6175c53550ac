"""The TVM runtime a deployed runner is built against: headers plus ``libtvm_runtime.so`` and
``libtvm_ffi.so``, laid out as ``<root>/include`` and ``<root>/lib``.

* For this host's architecture the runtime is copied out of the installed ``apache-tvm`` and
  ``apache-tvm-ffi`` packages.
* For another architecture (aarch64) it is taken from that platform's wheels of the same
  versions, fetched once with ``pip download --platform manylinux_2_28_aarch64`` into the cache
  (``~/.cache/tvm_structconv/<arch>-runtime``, or ``$STRUCTCONV_CACHE``), so CI downloads once.

The wheels are plain zip files; only the runtime (not the 240 MB compiler library) is extracted.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Optional

__all__ = [
    "RUNTIME_LIBRARIES",
    "RuntimeUnavailableError",
    "cache_dir",
    "host_arch",
    "runtime_root",
]

#: The shared libraries a runner needs at run time, found in ``<root>/lib``.
RUNTIME_LIBRARIES = ("libtvm_runtime.so", "libtvm_ffi.so")

#: manylinux platform tag of each architecture whose wheels can be fetched.
WHEEL_PLATFORMS: Dict[str, str] = {"aarch64": "manylinux_2_28_aarch64"}

# wheel member prefix -> where it goes under the runtime root
_TVM_MEMBERS = {"tvm/include/": "include/", "tvm/lib/libtvm_runtime.so": "lib/libtvm_runtime.so"}
_FFI_MEMBERS = {"tvm_ffi/include/": "include/", "tvm_ffi/lib/libtvm_ffi.so": "lib/libtvm_ffi.so"}


class RuntimeUnavailableError(OSError):
    """The TVM runtime for an architecture cannot be found or fetched."""


def host_arch() -> str:
    """This machine's architecture as in target triples (``x86_64``, ``aarch64``)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def cache_dir() -> Path:
    """Where fetched runtimes are kept: ``$STRUCTCONV_CACHE`` or ``~/.cache/tvm_structconv``."""
    return Path(os.environ.get("STRUCTCONV_CACHE", Path.home() / ".cache" / "tvm_structconv"))


def _versions() -> Dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("apache-tvm", "apache-tvm-ffi")}


def runtime_root(arch: str, cache: Optional[Path] = None, download: bool = True) -> Path:
    """A folder with the TVM runtime for ``arch``: ``include/`` and ``lib/``.

    Parameters
    ----------
    arch
        ``x86_64`` or ``aarch64``.
    cache
        Cache folder (default :func:`cache_dir`).
    download
        Fetch the wheels when they are not in the cache (else raise).

    Raises
    ------
    RuntimeUnavailableError
        If the runtime is not cached and cannot (or may not) be downloaded.
    """
    versions = _versions()
    folder = (cache or cache_dir()) / f"{arch}-runtime"
    root = folder / f"tvm-{versions['apache-tvm']}-ffi-{versions['apache-tvm-ffi']}"
    if all((root / "lib" / name).is_file() for name in RUNTIME_LIBRARIES):
        return root
    if arch == host_arch():
        return _install(root, _from_installed_packages)
    if arch not in WHEEL_PLATFORMS:
        raise RuntimeUnavailableError(f"no TVM runtime wheels are known for {arch!r}")
    wheels = folder / "wheels"
    if not _find_wheels(wheels, versions):
        if not download:
            raise RuntimeUnavailableError(
                f"the {arch} TVM runtime is not in {wheels}; run `structconv deploy` once with "
                "network access to fetch it"
            )
        _download_wheels(wheels, arch, versions)
    found = _find_wheels(wheels, versions)
    return _install(root, lambda staging: _from_wheels(staging, found))


def _install(root: Path, fill) -> Path:
    """Fill a staging folder with ``fill`` and move it to ``root`` (atomic for other readers)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    try:
        fill(staging)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _from_installed_packages(staging: Path) -> None:
    import tvm.libinfo
    import tvm_ffi.libinfo

    (staging / "lib").mkdir()
    for include in (tvm.libinfo.find_include_path(), tvm_ffi.libinfo.find_include_path()):
        include = include[0] if isinstance(include, list) else include
        shutil.copytree(include, staging / "include", dirs_exist_ok=True)
    runtime = tvm.libinfo.find_libtvm_runtime()
    runtime = runtime[0] if isinstance(runtime, list) else runtime
    shutil.copy2(runtime, staging / "lib" / "libtvm_runtime.so")
    shutil.copy2(tvm_ffi.libinfo.find_libtvm_ffi(), staging / "lib" / "libtvm_ffi.so")


def _find_wheels(folder: Path, versions: Dict[str, str]) -> Optional[Dict[str, Path]]:
    found = {}
    for name, version in versions.items():
        stem = f"{name.replace('-', '_')}-{version}-"
        matches = sorted(folder.glob(f"{stem}*.whl")) if folder.is_dir() else []
        if not matches:
            return None
        found[name] = matches[0]
    return found


def _download_wheels(folder: Path, arch: str, versions: Dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        WHEEL_PLATFORMS[arch],
        "--dest",
        str(folder),
    ]
    command += [f"{name}=={version}" for name, version in versions.items()]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeUnavailableError(
            f"cannot download the {arch} TVM runtime wheels ({' '.join(command[3:])}): {last}"
        )


def _from_wheels(staging: Path, wheels: Dict[str, Path]) -> None:
    for name, members in (("apache-tvm", _TVM_MEMBERS), ("apache-tvm-ffi", _FFI_MEMBERS)):
        with zipfile.ZipFile(wheels[name]) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                for prefix, destination in members.items():
                    if info.filename.startswith(prefix):
                        target = staging / (destination + info.filename[len(prefix) :])
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with archive.open(info) as source, open(target, "wb") as sink:
                            shutil.copyfileobj(source, sink)
    missing = [name for name in RUNTIME_LIBRARIES if not (staging / "lib" / name).is_file()]
    if missing:
        raise RuntimeUnavailableError(
            f"the wheels {sorted(map(str, wheels.values()))} hold no {', '.join(missing)}"
        )
