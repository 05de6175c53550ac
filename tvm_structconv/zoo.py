"""Third-party model families (torchvision, timm) run through the whole compiler and checked.

Each family is one classifier of torchvision's or timm's own definition, built with random
weights (and random BatchNorm statistics, so folding them is tested), optionally
``structurize``d with a plan, exported through one of three paths and compiled:

* ``torchscript``: ``torch.onnx.export(dynamo=False, do_constant_folding=False)`` (what
  :func:`tvm_structconv.export.export` writes, manifest in the ONNX metadata);
* ``dynamo``: ``torch.onnx.export(dynamo=True)`` (BatchNorm folded by the exporter, weight
  names kept; manifest in the metadata);
* ``pt2``: ``torch.export`` saved as ``.pt2`` (sidecar manifest).

:func:`check` reports whether the build compiled, its largest error against the model's own
runtime (onnxruntime or torch), what the rewrite did and how long each stage took; a failure
in any stage is one line, never a traceback. ``benchmarks/zoo.py`` and ``structconv zoo``
print the coverage table from it.

``torchvision`` and ``timm`` are the ``zoo`` extra. With the CPU torch wheel, PyPI's
torchvision cannot load its C++ ops (``operator torchvision::nms does not exist``);
:func:`import_torchvision` then declares the two operator schemas the Python model builders
need, before importing it, so the classifiers build and run.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from tvm_structconv.manifest import Manifest
from tvm_structconv.messages import one_line
from tvm_structconv.models import DEFAULT_PLAN

__all__ = [
    "COVERAGE_PLAN",
    "DEFAULT_BUILDS",
    "EXPORTERS",
    "FAMILIES",
    "Family",
    "ZooResult",
    "check",
    "coverage_table",
    "create",
    "export_model",
    "import_torchvision",
]

#: The export paths :func:`export_model` knows.
EXPORTERS = ("torchscript", "dynamo", "pt2")


#: Every 3x3 conv structured, grouped ones included: what the coverage checks compile.
COVERAGE_PLAN = "3x3:n=2,c=C,grouped=yes"


@dataclass(frozen=True)
class Family:
    """One model family: where its definition lives and what input it needs.

    Attributes
    ----------
    name
        The family's name in the coverage table.
    library
        ``"torchvision"`` or ``"timm"``.
    arch
        The builder's name in that library.
    plan
        The structure plan of its structured variant in the coverage checks: every 3x3 conv,
        grouped ones too, ``c = C, n = 2`` by default (:data:`COVERAGE_PLAN`, what the compiler
        must handle); ConvNeXt has no 3x3 conv and spends its time in Linear layers.
    speed_plan
        The plan its timing uses (``benchmarks/zoo.py --time``): what the compiled kernels turn
        into speed, :data:`~tvm_structconv.models.DEFAULT_PLAN` by default.
    min_size
        Smallest input side the model accepts or exports at (Inception-v3: 75; VGG: 224,
        since the TorchScript exporter cannot export its adaptive pool up to 7x7).
    """

    name: str
    library: str
    arch: str
    min_size: int = 32
    plan: str = COVERAGE_PLAN
    speed_plan: str = DEFAULT_PLAN


FAMILIES: Dict[str, Family] = {
    family.name: family
    for family in (
        Family("resnet50", "torchvision", "resnet50"),
        Family("resnext50", "torchvision", "resnext50_32x4d"),
        Family("wide_resnet50", "torchvision", "wide_resnet50_2"),
        Family("vgg11_bn", "torchvision", "vgg11_bn", min_size=224),  # adaptive pool to 7x7
        Family("densenet121", "torchvision", "densenet121"),
        Family("googlenet", "torchvision", "googlenet"),
        Family("inception_v3", "torchvision", "inception_v3", min_size=75),
        Family("squeezenet1_1", "torchvision", "squeezenet1_1"),
        Family("shufflenet_v2", "torchvision", "shufflenet_v2_x1_0"),
        Family("mobilenet_v2", "torchvision", "mobilenet_v2"),
        Family("mobilenet_v3_large", "torchvision", "mobilenet_v3_large"),
        Family("mobilenet_v3_small", "torchvision", "mobilenet_v3_small"),
        Family("mnasnet", "torchvision", "mnasnet1_0"),
        Family("efficientnet_b0", "torchvision", "efficientnet_b0"),
        Family("regnet_x", "torchvision", "regnet_x_400mf"),
        Family("regnet_y", "torchvision", "regnet_y_400mf"),
        Family(
            "convnext_tiny",
            "torchvision",
            "convnext_tiny",
            plan="4x4:n=2,c=C;linear:c=C/2",
            # its MLPs' first Linear (C -> 4C) as the default plan's 1x1 expansions
            speed_plan="linear:c=C/2,min_channels=160,min_expansion=4",
        ),
        Family("ghostnet", "timm", "ghostnet_100"),
        Family("mixnet", "timm", "mixnet_s"),
        Family("repvgg", "timm", "repvgg_a0"),
        Family("mobileone", "timm", "mobileone_s0"),
    )
}


def import_torchvision():
    """``import torchvision``, declaring its two C++ operator schemas first if they are missing.

    The CPU torch wheel cannot load the C++ ops of PyPI's torchvision wheel, whose import then
    fails on registering the fake kernel of ``torchvision::nms``. The model builders are pure
    Python: with the schemas declared they build and run. With a torch that loads the ops
    nothing is declared.
    """
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        torch.library.define(
            "torchvision::nms", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        )
        torch.library.define(
            "torchvision::qnms", "(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor"
        )
        import torchvision
    return torchvision


def create(name: str, seed: int = 0) -> nn.Module:
    """The family's classifier in eval mode, random weights and BatchNorm statistics.

    Raises
    ------
    KeyError
        If ``name`` is not a family of :data:`FAMILIES`.
    """
    family = FAMILIES[name]
    torch.manual_seed(seed)
    if family.library == "torchvision":
        builder = getattr(import_torchvision().models, family.arch)
        extra = (
            {"aux_logits": False, "init_weights": True}
            if name in ("googlenet", "inception_v3")
            else {}
        )
        model = builder(weights=None, **extra)
    else:
        import_torchvision()  # timm imports torchvision
        import timm

        model = timm.create_model(family.arch, pretrained=False)
    _randomize_normalization(model, seed)
    return model.eval()


def _randomize_normalization(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.running_mean is not None
            ):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(shape, generator=generator))


def export_model(
    model: nn.Module,
    example_input: torch.Tensor,
    manifest: Manifest,
    folder: Path,
    stem: str,
    exporter: str,
) -> Path:
    """Export ``model`` with ``manifest`` through ``exporter`` into ``folder``; the file's path."""
    from tvm_structconv.export import export

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    folder.mkdir(parents=True, exist_ok=True)
    if exporter == "torchscript":
        path = folder / f"{stem}.onnx"
        export(model, path, example_input, manifest)
    elif exporter == "pt2":
        path = folder / f"{stem}.pt2"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(model, path, example_input, manifest)
    else:
        import onnx

        path = folder / f"{stem}-dynamo.onnx"
        with warnings.catch_warnings(), open(os.devnull, "w") as quiet:
            warnings.simplefilter("ignore")
            from contextlib import redirect_stdout

            with redirect_stdout(quiet):  # the dynamo exporter prints its progress
                torch.onnx.export(model, (example_input,), path, dynamo=True)
        proto = onnx.load(path)
        manifest.embed_onnx(proto)
        onnx.save(proto, path)
    return path


@dataclass
class ZooResult:
    """What :func:`check` found for one family, export path, variant and target.

    Attributes
    ----------
    family, exporter, target
        What was checked.
    structured
        Whether the model was ``structurize``d and compiled with the rewrite.
    input_shape
        The input's shape.
    stage
        The stage reached: ``"done"``, or the one that failed (``export``, ``import``,
        ``compile``, ``run``).
    error
        The failure in one line, or ``None``.
    max_rel_error
        Largest error relative to the output's magnitude, against the oracle (``None`` when
        the build cannot run here, e.g. aarch64).
    recorded
        Layers the manifest records a structure for (structured builds).
    layers, rewritten
        Conv/linear layers the rewrite saw and rewrote (structured builds).
    macs_before, macs_after
        Conv/linear MACs before and after the rewrite.
    skipped
        ``{reason: count}`` of the layers the rewrite left alone.
    seconds
        ``{stage: seconds}``.
    """

    family: str
    exporter: str
    target: str
    structured: bool
    input_shape: Tuple[int, ...]
    stage: str = "export"
    error: Optional[str] = None
    max_rel_error: Optional[float] = None
    recorded: int = 0
    layers: int = 0
    rewritten: int = 0
    macs_before: int = 0
    macs_after: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every stage passed."""
        return self.stage == "done"


#: A build :func:`check` makes of one export: (target name, with the structured rewrite).
Build = Tuple[str, bool]
#: The builds of one export by default: x86 original and structured, aarch64 structured.
DEFAULT_BUILDS: Tuple[Build, ...] = (("x86", False), ("x86", True), ("aarch64", True))


def check(
    name: str,
    exporter: str = "torchscript",
    builds: Sequence[Build] = DEFAULT_BUILDS,
    image_size: Sequence[int] = (64, 64),
    batch: int = 1,
    plan: Optional[str] = None,
    workdir: Optional[os.PathLike] = None,
    link: bool = False,
    seed: int = 0,
) -> List[ZooResult]:
    """Build, ``structurize``, export and import one family once; compile and check each build.

    The model is structured with ``plan`` before export whenever a build asks for the rewrite;
    a build without it compiles the same file as an ordinary model (the original build: its
    weights' values do not change what it does).

    Parameters
    ----------
    name
        A family of :data:`FAMILIES`.
    exporter
        One of :data:`EXPORTERS`.
    builds
        ``(target name, structured)`` pairs. A build that cannot run here (aarch64 on x86) is
        compiled only, and cross-linked into a library with ``link``.
    image_size
        ``(height, width)`` of the input.
    batch
        The batch size the model is exported with.
    plan
        The structure plan (default: the family's).
    workdir
        Where the exported model (and linked libraries) go (a temporary folder when ``None``).

    Returns
    -------
    list of ZooResult
        One per build, in order. A failure of the model is a result's ``error``, never an
        exception; a failure before compiling is every build's.
    """
    from tvm_structconv.frontend import load_model
    from tvm_structconv.nn import structurize
    from tvm_structconv.plan import Plan

    height, width = (int(s) for s in image_size)
    shape = (batch, 3, height, width)
    results = [
        ZooResult(name, exporter, target, structured, shape) for target, structured in builds
    ]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        stage, seconds = "export", {}
        try:
            start = time.perf_counter()
            model = create(name, seed)
            manifest = Manifest({})
            if any(structured for _, structured in builds):
                model, manifest = structurize(model, Plan.parse(plan or FAMILIES[name].plan))
            example = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
            path = export_model(
                model, example, manifest, folder, f"{name}-{batch}x{height}x{width}", exporter
            )
            seconds["export"] = time.perf_counter() - start
            stage = "import"
            start = time.perf_counter()
            imported = load_model(path)
            seconds["import"] = time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - the results report any failure in one line
            for result in results:
                result.stage, result.error, result.seconds = stage, one_line(error), dict(seconds)
            return results
        inputs = [example.numpy()]
        expected: List[np.ndarray] = []
        for result in results:
            result.seconds.update(seconds)
            result.recorded = len(manifest.layers) if result.structured else 0
            library = folder / f"{name}-{result.target}.so" if link else None
            _compile_and_run(result, imported, inputs, expected, library)
    return results


def _compile_and_run(
    result: ZooResult,
    imported,
    inputs: List[np.ndarray],
    expected: List[np.ndarray],
    library: Optional[Path],
) -> None:
    """Compile ``imported`` as ``result`` says, run it where it can run, and fill ``result``.

    ``expected`` caches the oracle's outputs across the builds of one export.
    """
    from tvm_structconv.build import compile_model, max_errors
    from tvm_structconv.oracle import reference_outputs
    from tvm_structconv.targets import make_target
    from tvm_structconv.toolchain import DeviceError, check_runnable

    try:
        result.stage = "compile"
        start = time.perf_counter()
        compiled = compile_model(
            imported, make_target(result.target), structured=result.structured, tuning_logs=False
        )
        if library is not None:
            compiled.export(library)
        result.seconds["compile"] = time.perf_counter() - start
        _record_rewrite(result, compiled.report)
        try:
            check_runnable(compiled.target)
        except DeviceError:
            result.stage = "done"  # compiled (and linked): it runs on its device only
            return
        result.stage = "run"
        start = time.perf_counter()
        if not expected:
            expected.extend(reference_outputs(imported, inputs))
        result.max_rel_error = max_errors(compiled.run(*inputs), expected)[1]
        result.seconds["run"] = time.perf_counter() - start
        result.stage = "done"
    except Exception as error:  # noqa: BLE001 - the result reports any failure in one line
        result.error = one_line(error)


def _record_rewrite(result: ZooResult, report) -> None:
    if report is None:
        return
    result.layers = len(report.layers)
    result.rewritten = len(report.rewritten)
    result.macs_before, result.macs_after = report.macs_before, report.macs_after
    result.skipped = dict(Counter(layer.reason for layer in report.skipped))


def coverage_table(results: List[ZooResult]) -> str:
    """A Markdown table: one row per family × export path × variant × target."""
    rows = [
        "| family | export | variant | target | input | result | max rel error | "
        "layers rewritten | conv MACs before → after | compile s | skipped (reason: count) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        status = "ok" if r.ok else f"fails in {r.stage}: {r.error}"
        error = f"{r.max_rel_error:.1e}" if r.max_rel_error is not None else "-"
        rewritten = f"{r.rewritten}/{r.layers}" if r.structured else "-"
        macs = (
            f"{r.macs_before / 1e6:.0f}M → {r.macs_after / 1e6:.0f}M"
            if r.structured and r.layers
            else "-"
        )
        compile_s = f"{r.seconds['compile']:.1f}" if "compile" in r.seconds else "-"
        skipped = "; ".join(f"{reason}: {count}" for reason, count in sorted(r.skipped.items()))
        rows.append(
            f"| {r.family} | {r.exporter} | {'structured' if r.structured else 'original'}"
            f" | {r.target} | {'x'.join(map(str, r.input_shape))} | {status} | {error} | "
            f"{rewritten} | {macs} | {compile_s} | {skipped or '-'} |"
        )
    return "\n".join(rows)
