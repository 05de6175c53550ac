"""Compile an imported model for a target, with or without the structured rewrite.

The pipeline (:func:`prepare_module`, then :func:`compile_model`):

1. fold BatchNorm into convs (:func:`~tvm_structconv.transform.fold_batchnorm`);
2. for a scheduled CPU build, plan activations in NHWC: ``clip`` as ``minimum(maximum(…))``
   (:class:`~tvm_structconv.transform.ExpandClip`) so that ``relax.transform.ConvertLayout``
   carries NHWC through ReLU6 too; transposes the model makes itself are moved down through
   elementwise ops until they cancel (:func:`~tvm_structconv.transform.sink_transposes`);
   layout transposes remain only where a tensor leaves the conv part (before ``flatten``) and
   at a model input of more than a few channels (an image input is read in its NCHW layout
   by the first conv's padding stage:
   :data:`~tvm_structconv.transform.conv_call.NCHW_INPUT_MAX_CHANNELS`);
3. rewrite every structured conv / linear
   (:func:`~tvm_structconv.transform.rewrite_structured_conv`),
   then every other conv as the same fused op with the trivial structure
   (:func:`~tvm_structconv.transform.rewrite_ordinary_conv`) — in both builds, so that original
   and structured models get the same schedules; NHWC kernels are packed at compile time;
4. TVM's CPU Relax pipeline (legalize, fuse: bias, ReLU/ReLU6 and residual adds fuse into the
   conv's function), with the project's hand schedules applied after fusion
   (:class:`~tvm_structconv.transform.ApplySchedules`); other targets, or ``schedules=False``,
   get TVM's default pipeline on the NCHW module. For CUDA the functions holding the fused
   conv get the shared-memory template of :mod:`tvm_structconv.schedules.gpu.conv` (before dlight
   runs), and dlight's GPU rules (``Matmul``, ``GEMV``, ``Reduction``, ``GeneralReduction``,
   ``Fallback``) schedule the rest, so a CUDA build needs no tuning log.

A library for another CPU (aarch64) is linked with its cross compiler on export
(:func:`~tvm_structconv.toolchain.export_compiler`); running a build that cannot run here
(aarch64 on x86, CUDA without a GPU) raises :class:`~tvm_structconv.toolchain.DeviceError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.relax.backend.cuda import pipeline as gpu_pipeline

from tvm_structconv.frontend import ImportedModel, InputSpec
from tvm_structconv.manifest import ManifestError
from tvm_structconv.messages import one_line
from tvm_structconv.schedules.packing import ConvLayout, conv_layout
from tvm_structconv.structure import default_tolerance
from tvm_structconv.targets import make_target
from tvm_structconv.toolchain import check_runnable, export_compiler
from tvm_structconv.transform import (
    ApplySchedules,
    ApplyTuningDatabase,
    ExpandClip,
    RewriteReport,
    StructureMismatchError,
    fold_batchnorm,
    merge_parallel_convs,
    rewrite_ordinary_conv,
    rewrite_structured_conv,
    sink_transposes,
    tuned_functions,
)
from tvm_structconv.transform.fast_legalize import legalize_ops
from tvm_structconv.tuning_logs import has_database, load_database, logs_dir

if TYPE_CHECKING:
    from tvm.s_tir import meta_schedule as ms

__all__ = [
    "CompileError",
    "CompiledModel",
    "PreparedModule",
    "compile_model",
    "cuda_pipeline",
    "lowering_passes",
    "check_manifest_matches",
    "prepare_module",
    "schedule_passes",
    "scheduled_pipeline",
]

#: ``relax.transform.ConvertLayout``'s request for a scheduled CPU build.
NHWC_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "OHWI"]}


class CompileError(RuntimeError):
    """A model that imported but that the compiler failed on: a bug of the compiler or of TVM.

    The message is one line: the model, the target, the stage and the failure's last line;
    the original exception is the ``__cause__`` (``structconv --debug`` shows its traceback).
    """

    def __init__(
        self, source: str, target: tvm.target.Target, stage: str, error: BaseException
    ) -> None:
        super().__init__(
            f"compiling {source} for {target.kind.name}: {stage} failed with "
            f"{one_line(error)}. This is a bug of tvm_structconv; "
            "please report it with the traceback of --debug (--original compiles without the "
            "structured rewrite)"
        )


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
        Anything the user should know (e.g. weights matched by value, the tuning log applied).
    tuned
        The fused functions that got a schedule from a tuning log.
    """

    executable: relax.Executable
    target: tvm.target.Target
    inputs: List[InputSpec]
    report: Optional[RewriteReport]
    folded: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    tuned: List[str] = field(default_factory=list)

    def device(self) -> tvm.runtime.Device:
        """The device this build runs on (``tvm.cpu()`` or ``tvm.cuda()``)."""
        return tvm.cuda() if self.target.kind.name == "cuda" else tvm.cpu()

    def load(self) -> relax.VirtualMachine:
        """A VM ready to run ``main`` on :meth:`device`.

        Raises
        ------
        DeviceError
            If the build cannot run here (an aarch64 library on x86, CUDA without a GPU).
        """
        check_runnable(self.target)
        return relax.VirtualMachine(self.executable, self.device())

    def run(self, *arrays: np.ndarray) -> List[np.ndarray]:
        """Run ``main`` once on numpy inputs; return every output as a numpy array."""
        device = self.device()
        result = self.load()["main"](*(tvm.runtime.tensor(a, device) for a in arrays))
        return flatten_outputs(result)

    def export(self, path: Union[str, os.PathLike]) -> None:
        """Write a shared library that ``tvm.runtime.load_module`` loads (weights built in).

        A library for another architecture (aarch64) is linked with its cross compiler.

        Raises
        ------
        ToolchainError
            If the cross compiler is not installed.
        """
        self.executable.export_library(os.fspath(path), fcompile=export_compiler(self.target))


@dataclass(frozen=True)
class PreparedModule:
    """What :func:`prepare_module` returns: the module after the project's passes.

    Attributes
    ----------
    mod
        The module, every conv a fused op (structured or with the trivial structure).
    report
        The structured rewrite's report (``None`` when the rewrite did not run).
    folded
        The convs BatchNorm was folded into.
    notes
        Anything the user should know (e.g. weights matched by value).
    """

    mod: tvm.IRModule
    report: Optional[RewriteReport]
    folded: List[str]
    notes: List[str]


def flatten_outputs(result) -> List[np.ndarray]:
    """A VM result (a tensor or nested tuples of tensors) as a flat list of numpy arrays."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [array for item in result for array in flatten_outputs(item)]


def check_manifest_matches(imported: ImportedModel, tol: Optional[float] = None) -> None:
    """Refuse a manifest whose entries match no weight of the model by name or by value.

    Raises
    ------
    ManifestError
        Naming the first unmatched entry and how many more there are.
    """
    if set(imported.manifest.layers) <= set(imported.weight_names.values()):
        return  # every entry names a weight: the rewrite checks each one's structure
    weights = imported.weights()
    dtype = next(iter(weights.values()))[0].dtype if weights else "float32"
    unmatched = imported.manifest.unmatched(
        weights, tol if tol is not None else default_tolerance(dtype)
    )
    if unmatched:
        more = f" and {len(unmatched) - 1} more" if len(unmatched) > 1 else ""
        raise ManifestError(
            f"{imported.manifest.source}: {unmatched[0]!r}{more} match no weight of "
            f"{imported.source} by name or by value; is this manifest for another model? "
            "(--allow-unmatched compiles anyway and leaves them alone)"
        )


def prepare_module(
    imported: ImportedModel,
    structured: bool = True,
    tol: Optional[float] = None,
    match_by_value: bool = False,
    layout: Optional[ConvLayout] = None,
    allow_unmatched: bool = False,
) -> PreparedModule:
    """Run the project's passes on ``imported.mod``.

    Parameters
    ----------
    imported
        The model.
    structured
        Rewrite the structured layers (else only BatchNorm folding and the ordinary convs).
    tol, match_by_value
        See :func:`~tvm_structconv.transform.rewrite_structured_conv`.
    layout
        The target's :func:`~tvm_structconv.schedules.packing.conv_layout`. NCHW (``None``)
        keeps the model's layout; NHWC plans activations in NHWC first, so every conv
        becomes the NHWC fused op with ``alpha`` packed in the layout's blocks (what the CPU
        schedules are written for), and so does every Linear layer (a 1×1 conv: a packed,
        tiled GEMM).
    allow_unmatched
        Compile an ONNX model even when manifest entries match none of its weights by name or
        by value (:func:`check_manifest_matches`); they are left alone.

    Returns
    -------
    PreparedModule
        The module, the rewrite report (``None`` when ``structured`` is false), the folded
        convs and notes.

    Raises
    ------
    ManifestError
        If the manifest names weights the model does not have and value matching is off (an
        ONNX model: none of them by value either, unless ``allow_unmatched``).
    StructureMismatchError
        If a layer's weights do not satisfy its recorded structure.
    """
    layout = layout or conv_layout()
    mod, fold = fold_batchnorm(imported.mod, imported.weight_names)
    names = fold.weight_names
    nhwc = layout.layout == "NHWC"
    if nhwc:
        # ConvertLayout keeps each weight constant (under permute_dims): names stay valid
        mod = relax.transform.ConvertLayout(NHWC_LAYOUTS)(ExpandClip()(mod))
        # a model that permutes its activations itself (ConvNeXt) keeps transposes around
        # its elementwise ops: moved down until they cancel
        mod = sink_transposes(mod)
    notes: List[str] = []
    report = None
    if structured:
        manifest = imported.manifest
        missing = sorted(set(manifest.layers) - set(names.values()))
        if missing and not match_by_value:
            if imported.kind != "onnx":
                raise ManifestError(
                    f"{manifest.source}: {missing[0]!r} names no weight of the model"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                )
            # ONNX exporters rename weights they fold (onnx::Conv_14): find those by value
            if not allow_unmatched:
                check_manifest_matches(imported, tol)
            notes.append(
                f"{len(missing)} manifest names are not initializer names of the ONNX model "
                "(renamed by the exporter); their weights are matched by value"
            )
            match_by_value = True
        mod, report = rewrite_structured_conv(
            mod,
            manifest,
            names,
            tol=tol,
            match_by_value=match_by_value,
            block_size=layout.block_size,
            linear_as_conv=nhwc,
            winograd_tile=layout.winograd_tile,
        )
    # after the structured rewrite: a conv with a recorded structure is never merged
    mod, parallel = merge_parallel_convs(mod)
    notes.extend(parallel.summary())
    mod, ordinary = rewrite_ordinary_conv(mod, layout.block_size, linear_as_conv=nhwc)
    notes.extend(ordinary.summary())
    return PreparedModule(mod, report, fold.folded, notes)


def fusion_passes(target: tvm.target.Target) -> List[tvm.transform.Pass]:
    """TVM's CPU passes up to operator fusion: what runs before any schedule is applied.

    Tuning extracts its tasks after exactly these passes (:mod:`tvm_structconv.tune`), so the
    functions a tuning database holds are the ones :func:`scheduled_pipeline` looks up. TVM's
    ``LegalizeOps`` is replaced by :func:`~tvm_structconv.transform.fast_legalize.legalize_ops`
    (GELU and erf through the vectorizable ``fast_erf``).
    """
    legalize = cpu_pipeline.legalize_passes(target)
    assert legalize[0].info.name == "LegalizeOps", legalize[0].info.name
    return cpu_pipeline.library_dispatch_passes(target) + [legalize_ops()] + legalize[1:]


def schedule_passes(
    target: tvm.target.Target, database: Optional[ms.Database] = None
) -> List[tvm.transform.Pass]:
    """TVM's CPU passes up to fusion, then the schedules: the tuned ones, then the hand ones.

    With ``database``, each fused function it holds gets its tuned schedule first (marked
    :data:`~tvm_structconv.transform.TUNED`); :class:`ApplySchedules` then schedules the
    others by hand.
    """
    tuned = [ApplyTuningDatabase(database)] if database is not None else []
    return fusion_passes(target) + tuned + [ApplySchedules(target)]


def lowering_passes(target: tvm.target.Target) -> List[tvm.transform.Pass]:
    """TVM's CPU passes after scheduling: dataflow lowering and finalization."""
    return cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)


def _as_pass(
    name: str, target: tvm.target.Target, passes: List[tvm.transform.Pass]
) -> tvm.transform.Pass:
    """``passes`` as one module pass that runs them under ``target``."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def scheduled_pipeline(
    target: tvm.target.Target, database: Optional[ms.Database] = None
) -> tvm.transform.Pass:
    """TVM's CPU Relax pipeline with the project's schedules right after operator fusion.

    :func:`schedule_passes` then :func:`lowering_passes`, as one pass for ``tvm.compile``.
    """
    return _as_pass(
        "ScheduledCPUPipeline", target, schedule_passes(target, database) + lowering_passes(target)
    )


def cuda_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CUDA Relax pipeline with :class:`ApplySchedules` between fusion and dlight's rules."""

    legalize = gpu_pipeline.legalize_passes(target)  # ends with dlight's default rules
    return _as_pass(
        "ScheduledCUDAPipeline",
        target,
        gpu_pipeline.library_dispatch_passes(target)
        + legalize[:-1]
        + [ApplySchedules(target), legalize[-1]]
        + gpu_pipeline.dataflow_lower_passes(target)
        + gpu_pipeline.finalize_passes(target),
    )


def compile_model(
    imported: ImportedModel,
    target: Union[str, tvm.target.Target] = "x86",
    structured: bool = True,
    tol: Optional[float] = None,
    match_by_value: bool = False,
    schedules: bool = True,
    tuning_logs: Union[bool, str, os.PathLike] = True,
    allow_unmatched: bool = False,
) -> CompiledModel:
    """Compile ``imported`` for ``target`` (a name from :mod:`tvm_structconv.targets` or a Target).

    With ``structured`` false the model is compiled as it is (BatchNorm still folded): the
    baseline that structured builds are compared with. With ``schedules`` (the default) an
    LLVM target gets NHWC layout planning, the tuned schedules of its tuning log and the hand
    schedules for the rest (:func:`schedule_passes`, then :func:`lowering_passes`); without, or
    for another target kind,
    TVM's default pipeline compiles the NCHW module.

    ``tuning_logs``: ``True`` applies the target's database
    (:func:`~tvm_structconv.tuning_logs.logs_dir`) when there is one, ``False`` ignores tuning
    logs, a folder names the database to apply. The notes say which was applied and how many
    functions it scheduled. ``allow_unmatched``: see :func:`prepare_module`.

    Raises
    ------
    FileNotFoundError
        If ``tuning_logs`` names a folder without a database.
    ManifestError, StructureMismatchError
        See :func:`prepare_module`.
    CompileError
        If anything else fails in the passes or TVM's build: a bug, reported in one line.
    """
    if isinstance(target, str):
        target = make_target(target)
    scheduled = schedules and target.kind.name == "llvm"
    folder = _tuning_folder(target, tuning_logs) if scheduled else None
    database = load_database(folder) if folder is not None else None
    if scheduled:
        pipeline = _as_pass("LoweringCPUPipeline", target, lowering_passes(target))
    else:
        pipeline = cuda_pipeline(target) if target.kind.name == "cuda" else "default"
    layout = conv_layout(target, scheduled)
    try:
        prepared = prepare_module(
            imported, structured, tol, match_by_value, layout, allow_unmatched
        )
    except (ManifestError, StructureMismatchError):
        raise
    except Exception as error:
        raise CompileError(imported.source, target, "the passes", error) from error
    notes = list(prepared.notes)
    mod, tuned = prepared.mod, []
    try:
        if scheduled:  # scheduled here, so what the tuning log did is read from the module
            with target:
                mod = tvm.transform.Sequential(schedule_passes(target, database))(mod)
            tuned = tuned_functions(mod)
        with target:
            executable = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    except Exception as error:
        raise CompileError(imported.source, target, "TVM's build", error) from error
    if folder is not None:
        notes.append(
            f"tuning log {folder}: tuned schedules for {len(tuned)} functions, "
            "hand schedules for the rest"
        )
    return CompiledModel(
        executable,
        target,
        list(imported.inputs),
        prepared.report,
        prepared.folded,
        notes,
        tuned=tuned,
    )


def _tuning_folder(
    target: tvm.target.Target, tuning_logs: Union[bool, str, os.PathLike]
) -> Optional[str]:
    """The database folder :func:`compile_model` applies, or ``None``."""
    if tuning_logs is False:
        return None
    if tuning_logs is True:
        folder = logs_dir(target)
        return os.fspath(folder) if has_database(folder) else None
    if not has_database(tuning_logs):
        raise FileNotFoundError(
            f"{os.fspath(tuning_logs)}: no tuning database there "
            "(database_workload.json and database_tuning_record.json)"
        )
    return os.fspath(tuning_logs)


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
