"""The CUDA C++ that a CUDA build generated, and checking it with ``nvcc`` (no GPU needed).

A CUDA build made on a machine without a GPU holds its kernels as CUDA source (TVM 0.27
compiles them when the library is loaded on a GPU machine); :func:`cuda_source` reads that
source out of the executable's imported modules and :func:`compile_with_nvcc` compiles it
ahead of time for one architecture, which checks the generated code without a GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Union

from tvm import relax

from tvm_structconv.toolchain import ToolchainError

__all__ = ["NvccError", "compile_with_nvcc", "cuda_source", "find_nvcc"]

#: Where the CUDA toolkit puts nvcc when it is not on ``PATH``.
CUDA_HOME_NVCC = "/usr/local/cuda/bin/nvcc"


class NvccError(RuntimeError):
    """nvcc rejected generated CUDA code (a code generation bug, not a user error)."""


def _modules(module) -> List:
    found = [module]
    for child in module.imports:
        found += _modules(child)
    return found


def cuda_source(executable: relax.Executable) -> str:
    """The CUDA C++ source of every kernel of ``executable`` (one translation unit).

    Raises
    ------
    ValueError
        If the executable has no CUDA module (not a CUDA build).
    """
    sources = [
        module.inspect_source("") for module in _modules(executable.mod) if module.kind == "cuda"
    ]
    if not sources or not any(sources):
        raise ValueError("the executable holds no CUDA source: it is not a CUDA build")
    return "\n".join(sources)


def find_nvcc() -> str:
    """The path of ``nvcc``: on ``PATH``, else ``$CUDA_HOME/bin/nvcc``, else ``/usr/local/cuda``.

    Raises
    ------
    ToolchainError
        If no nvcc is found.
    """
    candidates = [shutil.which("nvcc")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append(CUDA_HOME_NVCC)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ToolchainError(
        "checking CUDA code needs nvcc, which is not installed; install the "
        "CUDA toolkit (e.g. `apt-get install -y nvidia-cuda-toolkit`) or put "
        "its bin/ on PATH"
    )


def compile_with_nvcc(
    source: str, arch: str, folder: Union[str, os.PathLike], nvcc: Optional[str] = None
) -> Path:
    """Compile ``source`` with ``nvcc -arch=<arch> -c``; return the object file.

    Parameters
    ----------
    source
        CUDA C++ (:func:`cuda_source`).
    arch
        ``sm_XX``.
    folder
        Where ``kernels_<arch>.cu`` and its ``.o`` are written.
    nvcc
        The compiler (default :func:`find_nvcc`).

    Raises
    ------
    ToolchainError
        If nvcc is not found.
    NvccError
        If nvcc rejects the source; the message holds nvcc's last lines.
    """
    nvcc = nvcc or find_nvcc()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cu = folder / f"kernels_{arch}.cu"
    cu.write_text(source)
    obj = cu.with_suffix(".o")
    done = subprocess.run(
        [nvcc, f"-arch={arch}", "-c", str(cu), "-o", str(obj)], capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise NvccError(f"nvcc -arch={arch} rejected {cu}:\n{tail}")
    return obj
