"""A deployment bundle: the folder a board needs to run a compiled model without Python.

::

    bundle/
      model.so            the compiled model (weights inside), cross-linked for the board
      model.json          inputs/outputs (names, shapes, dtypes), target, rewrite report, manifest
      structconv_run.cc   the C++ runner (source) and its Makefile
      Makefile
      structconv_run      the runner, built when the toolchain and the TVM runtime are at hand
      lib/                libtvm_runtime.so, libtvm_ffi.so for the board (the runner's RPATH)
      sample/             input0.bin … and expected.bin (the reference runtime's outputs)

The runner (``tvm_structconv/runner/``) loads ``model.so`` through the TVM runtime's C++ API
as a Relax VM, reads each input from a raw binary file, runs ``main``, writes the outputs and
prints the median latency of N runs; ``--expect`` compares with ``sample/expected.bin``. For
an aarch64 bundle it is built with ``aarch64-linux-gnu-g++`` against the runtime of the
aarch64 wheels (:mod:`tvm_structconv.runtime_libs`), and runs here under
``qemu-aarch64-static`` (:func:`run_bundle`) — a correctness check; timings under emulation
mean nothing, real latency comes from the board or TVM RPC.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import tvm
from tvm import relax

from tvm_structconv.build import CompiledModel
from tvm_structconv.frontend import ImportedModel, InputSpec
from tvm_structconv.runtime_libs import RUNTIME_LIBRARIES, RuntimeUnavailableError, runtime_root
from tvm_structconv.targets import TargetError, target_key
from tvm_structconv.toolchain import RunnerError, ToolchainError, cross_cxx, emulator, target_arch
from tvm_structconv.transform import RewriteReport

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "build_runner",
    "bundle_metadata",
    "deploy",
    "output_specs",
    "run_bundle",
    "write_bundle",
]

BUNDLE_FORMAT = "structconv-bundle/1"
LIBRARY = "model.so"
METADATA = "model.json"
RUNNER = "structconv_run"
RUNNER_SOURCES = ("structconv_run.cc", "Makefile")

PathLike = Union[str, os.PathLike]


@dataclass
class Bundle:
    """A written bundle.

    Attributes
    ----------
    folder
        The bundle folder.
    arch
        The CPU architecture it is for (``aarch64``, ``x86_64``).
    runner
        The built runner, or ``None`` when it was not built.
    build_hint
        Why the runner was not built and how to build it (``None`` when built).
    """

    folder: Path
    arch: str
    runner: Optional[Path] = None
    build_hint: Optional[str] = None


def output_specs(imported: ImportedModel) -> List[InputSpec]:
    """Name, shape and dtype of every output of ``main``, tuples flattened (``output0`` …)."""
    flat: List[Any] = []

    def visit(ty) -> None:
        if isinstance(ty, relax.TupleType):
            for field in ty.fields:
                visit(field)
        else:
            flat.append(ty)

    visit(imported.mod["main"].ret_ty)
    specs = []
    for index, ty in enumerate(flat):
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise TargetError(f"output {index} of the model is not a tensor of known shape: {ty}")
        if not all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape):
            raise TargetError(f"output {index} has a dynamic shape {ty.shape}")
        specs.append(InputSpec(f"output{index}", tuple(int(d) for d in ty.shape), str(ty.dtype)))
    return specs


def _spec(spec: InputSpec) -> Dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}


def _report(report: Optional[RewriteReport]) -> Optional[Dict[str, Any]]:
    if report is None:
        return None
    layers = []
    for layer in report.layers:
        structure = None
        if layer.structure is not None:
            s = layer.structure
            structure = {
                "in_channels": s.in_channels,
                "kernel_size": list(s.kernel_size),
                "reduced_channels": s.reduced_channels,
                "reduced_kernel_size": list(s.reduced_kernel_size),
                "groups": s.groups,
            }
        layers.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "rewritten": layer.rewritten,
                "reason": layer.reason,
                "structure": structure,
                "residual": layer.residual,
                "macs_before": layer.macs_before,
                "macs_after": layer.macs_after,
            }
        )
    return {
        "rewritten": len(report.rewritten),
        "layers": layers,
        "unmatched": list(report.unmatched),
        "macs_before": report.macs_before,
        "macs_after": report.macs_after,
    }


def bundle_metadata(compiled: CompiledModel, imported: ImportedModel) -> Dict[str, Any]:
    """The content of ``model.json`` (what the runner reads, and what a person wants to know)."""
    return {
        "format": BUNDLE_FORMAT,
        "library": LIBRARY,
        "arch": target_arch(compiled.target),
        "target": json.loads(str(compiled.target)),
        "target_key": target_key(compiled.target),
        "model": {"source": imported.source, "kind": imported.kind},
        "tvm": {
            name: importlib.metadata.version(name) for name in ("apache-tvm", "apache-tvm-ffi")
        },
        "inputs": [_spec(spec) for spec in compiled.inputs],
        "outputs": [_spec(spec) for spec in output_specs(imported)],
        "rewrite": _report(compiled.report),
        "batchnorm_folded": list(compiled.folded),
        "notes": list(compiled.notes),
        "manifest_origin": imported.manifest_origin,
        "manifest": imported.manifest.to_dict(),
    }


def write_bundle(
    compiled: CompiledModel,
    imported: ImportedModel,
    folder: PathLike,
    sample_inputs: Optional[Sequence[np.ndarray]] = None,
    expected: Optional[Sequence[np.ndarray]] = None,
) -> Bundle:
    """Write the library, ``model.json``, the runner sources and the sample into ``folder``.

    Parameters
    ----------
    compiled, imported
        The build and the model it came from.
    folder
        The bundle folder (created; existing bundle files are replaced).
    sample_inputs, expected
        A sample input per model input and the reference outputs for it (optional): written
        as ``sample/input<i>.bin`` and ``sample/expected.bin`` (outputs back to back).

    Raises
    ------
    TargetError
        For a CUDA build: bundles are for CPU targets.
    ToolchainError
        If the cross compiler the library needs is not installed.
    """
    if compiled.target.kind.name != "llvm":
        raise TargetError(
            "deploy builds bundles for CPU targets (x86, aarch64), not "
            f"{compiled.target.kind.name}; "
            "for a GPU use `structconv compile --target cuda` and load the library with the "
            "TVM Python runtime on the GPU machine"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    compiled.export(folder / LIBRARY)
    metadata = bundle_metadata(compiled, imported)
    if sample_inputs is not None:
        sample = folder / "sample"
        sample.mkdir(exist_ok=True)
        names = []
        for index, (spec, array) in enumerate(zip(compiled.inputs, sample_inputs)):
            np.ascontiguousarray(array, dtype=spec.dtype).tofile(sample / f"input{index}.bin")
            names.append(f"sample/input{index}.bin")
        metadata["sample"] = {"inputs": names}
        if expected is not None:
            specs = metadata["outputs"]
            blob = b"".join(
                np.ascontiguousarray(array, dtype=spec["dtype"]).tobytes()
                for spec, array in zip(specs, expected)
            )
            (sample / "expected.bin").write_bytes(blob)
            metadata["sample"]["expected"] = "sample/expected.bin"
    (folder / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    sources = importlib.resources.files("tvm_structconv") / "runner"
    for name in RUNNER_SOURCES:
        (folder / name).write_bytes((sources / name).read_bytes())
    return Bundle(folder, metadata["arch"])


def build_runner(folder: PathLike, arch: str, runtime: Optional[Path] = None) -> Path:
    """Build ``structconv_run`` in the bundle and copy the runtime libraries to ``lib/``.

    Parameters
    ----------
    folder
        A folder written by :func:`write_bundle`.
    arch
        The bundle's architecture; another than this host's is cross-compiled.
    runtime
        A TVM runtime root (``include/``, ``lib/``); default :func:`runtime_root` for ``arch``
        (downloads the aarch64 wheels once).

    Raises
    ------
    ToolchainError
        If the cross compiler is missing.
    RuntimeUnavailableError
        If the TVM runtime for ``arch`` cannot be found or fetched.
    RunnerError
        If ``make`` fails.
    """
    folder = Path(folder)
    compiler = cross_cxx(arch) or os.environ.get("CXX", "g++")
    runtime = runtime or runtime_root(arch)
    if shutil.which("make") is None:
        raise RunnerError(
            "building the runner needs `make`; install it with `apt-get install -y make`"
        )
    done = subprocess.run(
        ["make", "-s", "-C", str(folder), f"CXX={compiler}", f"TVM_ROOT={runtime}"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RunnerError(f"building {folder / RUNNER} failed:\n{_tail(done)}")
    (folder / "lib").mkdir(exist_ok=True)
    for name in RUNTIME_LIBRARIES:
        shutil.copy2(runtime / "lib" / name, folder / "lib" / name)
    return folder / RUNNER


def deploy(
    compiled: CompiledModel,
    imported: ImportedModel,
    folder: PathLike,
    sample_inputs: Optional[Sequence[np.ndarray]] = None,
    expected: Optional[Sequence[np.ndarray]] = None,
    build: bool = True,
) -> Bundle:
    """Write a bundle (:func:`write_bundle`) and build its runner when possible.

    When the cross toolchain or the TVM runtime for the board is missing, the bundle keeps the
    runner's sources and ``build_hint`` says what is missing and how to build on the board.
    """
    bundle = write_bundle(compiled, imported, folder, sample_inputs, expected)
    how = (
        f"build it on the board with `make TVM_ROOT=<TVM runtime with include/ and lib/>` in "
        f"{bundle.folder}"
    )
    if not build:
        bundle.build_hint = f"runner not built (--no-build); {how}"
        return bundle
    try:
        bundle.runner = build_runner(bundle.folder, bundle.arch)
    except (ToolchainError, RuntimeUnavailableError) as error:
        bundle.build_hint = f"runner not built: {error}; {how}"
    return bundle


def run_bundle(
    folder: PathLike,
    inputs: Optional[Sequence[PathLike]] = None,
    output: Optional[PathLike] = None,
    expect: Optional[PathLike] = None,
    repeat: int = 10,
    warmup: int = 2,
    rtol: float = 1e-4,
    timeout: float = 600.0,
) -> subprocess.CompletedProcess:
    """Run the bundle's runner here: natively, or under qemu for another architecture.

    Parameters
    ----------
    folder
        A bundle with a built runner.
    inputs
        One raw file per model input (default: the bundle's sample inputs, if any).
    output
        Where the runner writes the outputs (raw, back to back).
    expect
        Raw expected outputs; the runner exits 1 when they differ by more than ``rtol``.
    repeat, warmup
        Timed and untimed runs.

    Returns the finished process (``returncode``, ``stdout``). The runtime libraries are found
    through the runner's RPATH (``lib/``) and ``LD_LIBRARY_PATH``.

    Raises
    ------
    ToolchainError
        If the bundle is for another architecture and qemu is not installed.
    RunnerError
        If the bundle has no built runner.
    """
    folder = Path(folder).resolve()
    metadata = json.loads((folder / METADATA).read_text())
    runner = folder / RUNNER
    if not runner.is_file():
        raise RunnerError(f"{runner} is not built; see {folder / 'Makefile'}")
    if inputs is None:
        inputs = [folder / name for name in metadata.get("sample", {}).get("inputs", [])]
    command = emulator(metadata["arch"]) + [
        str(runner),
        "--model",
        str(folder / METADATA),
        "--repeat",
        str(repeat),
        "--warmup",
        str(warmup),
        "--rtol",
        str(rtol),
    ]
    for path in inputs:
        command += ["--input", os.fspath(path)]
    if output is not None:
        command += ["--output", os.fspath(output)]
    if expect is not None:
        command += ["--expect", os.fspath(expect)]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(folder / "lib"), os.environ.get("LD_LIBRARY_PATH")])
    )
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _tail(done: subprocess.CompletedProcess, lines: int = 20) -> str:
    text = (done.stdout or "") + (done.stderr or "")
    return "\n".join(text.strip().splitlines()[-lines:])
