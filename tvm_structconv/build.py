"""Compile an imported model for a target, with or without the structured rewrite.

The pipeline: fold BatchNorm into convs, rewrite every structured conv / linear
(:class:`~tvm_structconv.transform.RewriteStructuredConv`), then TVM's default Relax pipeline
for the target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import numpy as np
import tvm
from tvm import relax

from tvm_structconv.frontend import ImportedModel, InputSpec
from tvm_structconv.manifest import ManifestError
from tvm_structconv.targets import make_target
from tvm_structconv.transform import FoldBatchNorm, RewriteReport, RewriteStructuredConv

__all__ = ["CompiledModel", "compile_model", "prepare_module"]


@dataclass
class CompiledModel:
    """A compiled model and what the compiler did to it.

    Attributes
    ----------
    executable
        The Relax VM executable.
    target
        What it was compiled for.
    inputs
        The model inputs.
    report
        The structured rewrite's report (``None`` for a build without the rewrite).
    folded
        The convs BatchNorm was folded into.
    notes
        Anything the user should know (e.g. weights matched by value).
    """

    executable: relax.Executable
    target: tvm.target.Target
    inputs: List[InputSpec]
    report: Optional[RewriteReport]
    folded: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def device(self) -> tvm.runtime.Device:
        """The device this build runs on (``tvm.cpu()`` or ``tvm.cuda()``)."""
        return tvm.cuda() if self.target.kind.name == "cuda" else tvm.cpu()

    def load(self) -> relax.VirtualMachine:
        """A VM ready to run ``main`` on :meth:`device`."""
        return relax.VirtualMachine(self.executable, self.device())

    def run(self, *arrays: np.ndarray) -> List[np.ndarray]:
        """Run ``main`` once on numpy inputs; return every output as a numpy array."""
        device = self.device()
        result = self.load()["main"](*(tvm.runtime.tensor(a, device) for a in arrays))
        return flatten_outputs(result)

    def export(self, path: Union[str, os.PathLike]) -> None:
        """Write a shared library that ``tvm.runtime.load_module`` loads (weights built in)."""
        self.executable.export_library(os.fspath(path))


def flatten_outputs(result) -> List[np.ndarray]:
    """A VM result (a tensor or nested tuples of tensors) as a flat list of numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [array for item in result for array in flatten_outputs(item)]


def prepare_module(
    imported: ImportedModel,
    structured: bool = True,
    tol: Optional[float] = None,
    match_by_value: bool = False,
) -> tuple[tvm.IRModule, Optional[RewriteReport], List[str], List[str]]:
    """Run the project's passes on ``imported.mod``.

    Returns the module, the rewrite report (``None`` when ``structured`` is false), the list
    of folded convs and notes.

    Raises
    ------
    ManifestError
        If the manifest names weights the model does not have and value matching is off.
    StructureMismatchError
        If a layer's weights do not satisfy its recorded structure.
    """
    names = dict(imported.weight_names)
    fold = FoldBatchNorm(names)
    mod = fold(imported.mod)
    notes: List[str] = []
    if not structured:
        return mod, None, list(fold.folded), notes
    manifest = imported.manifest
    missing = sorted(set(manifest.layers) - set(names.values()))
    if missing and not match_by_value:
        if imported.kind != "onnx":
            raise ManifestError(
                f"{manifest.source}: {missing[0]!r} names no weight of the model"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        # ONNX exporters rename weights they fold (onnx::Conv_14): find those by value
        notes.append(
            f"{len(missing)} manifest names are not initializer names of the ONNX model "
            "(renamed by the exporter); their weights are matched by value"
        )
        match_by_value = True
    rewrite = RewriteStructuredConv(manifest, names, tol=tol, match_by_value=match_by_value)
    mod = rewrite(mod)
    return mod, rewrite.report, list(fold.folded), notes


def compile_model(
    imported: ImportedModel,
    target: Union[str, tvm.target.Target] = "x86",
    structured: bool = True,
    tol: Optional[float] = None,
    match_by_value: bool = False,
) -> CompiledModel:
    """Compile ``imported`` for ``target`` (a name from :mod:`tvm_structconv.targets` or a Target).

    With ``structured`` false the model is compiled as it is (BatchNorm still folded): the
    baseline that structured builds are compared with.
    """
    if isinstance(target, str):
        target = make_target(target)
    mod, report, folded, notes = prepare_module(imported, structured, tol, match_by_value)
    with target:
        executable = tvm.compile(mod, target=target)
    return CompiledModel(executable, target, list(imported.inputs), report, folded, notes)


def max_errors(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> tuple[float, float]:
    """Largest absolute error and largest error relative to each output's largest magnitude."""
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} outputs, expected {len(expected)}")
    absolute = relative = 0.0
    for got, want in zip(actual, expected):
        if got.shape != want.shape:
            raise ValueError(f"output shape {got.shape}, expected {want.shape}")
        error = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        absolute = max(absolute, error)
        relative = max(relative, error / scale if scale else error)
    return absolute, relative
