"""The ``structconv`` command: demo, models, export, compile, verify, deploy, tune, plan and
bench."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["main"]


class Progress:
    """Numbered progress lines on stderr with the time each step took."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.step = 0

    def run(self, message: str, action: Callable):
        """Print ``[k/total] message …``, run ``action()``, print how long it took; its result."""
        self.step += 1
        print(f"[{self.step}/{self.total}] {message} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = action()
        print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        return result


# --------------------------------------------------------------------------- helpers
def _load(args: argparse.Namespace):
    from tvm_structconv.build import check_manifest_matches
    from tvm_structconv.frontend import load_model
    from tvm_structconv.manifest import Manifest

    if getattr(args, "plan", None):
        from tvm_structconv.plan import Plan
        from tvm_structconv.planner.source import ModelSource

        # the plan's layers are projected onto their structures: the manifest is the plan's
        source = ModelSource(args.model, input_shapes=_input_shapes(args))
        return source.imported(source.plan_structures(Plan.from_argument(args.plan)))
    # --detect looks at the weights alone: no recorded structure is read
    manifest = Manifest({}, "<--detect>") if args.detect else args.manifest
    imported = load_model(args.model, manifest=manifest, input_shapes=_input_shapes(args))
    if not args.detect and not args.allow_unmatched:
        # before any work: a manifest of another model fails at once (compile_model would
        # refuse it too, after BatchNorm folding)
        check_manifest_matches(imported, getattr(args, "tol", None))
    return imported


def _input_shapes(args: argparse.Namespace) -> Optional[dict]:
    """``--input-shape NAME:1x3x224x224`` (repeatable) as ``{name: shape}``."""
    from tvm_structconv.frontend import FrontendError
    from tvm_structconv.onnx_static import InputShapeError, parse_input_shape

    shapes = {}
    for text in getattr(args, "input_shape", None) or []:
        try:
            name, shape = parse_input_shape(text)
        except InputShapeError as error:
            raise FrontendError(str(error)) from None
        shapes[name] = shape
    return shapes or None


def _target(args: argparse.Namespace):
    from tvm_structconv.targets import make_target

    return make_target(args.target, args.cuda_arch, args.mcpu, args.mattr)


def _add_target_arguments(parser: argparse.ArgumentParser, default_help: str) -> None:
    """``--target``, ``--mcpu``, ``--mattr`` (and ``--cuda-arch``): what compile, verify,
    deploy and tune build for."""
    parser.add_argument(
        "--target",
        default="x86",
        help=f"{default_help}; aliases x86_64, arm64; or a JSON target dict "
        '(\'{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}\')',
    )
    parser.add_argument(
        "--mcpu",
        default=None,
        metavar="CPU",
        help="the CPU to build for, as LLVM names it (cortex-a72, cortex-a76, neoverse-n1, "
        "skylake-avx512); default: this host's for x86, generic NEON for aarch64",
    )
    parser.add_argument(
        "--mattr", default=None, metavar="+F1,+F2", help="extra LLVM CPU features (+dotprod)"
    )
    parser.add_argument(
        "--cuda-arch", default=None, help="GPU architecture of --target cuda (default sm_80)"
    )


def _add_input_shape_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME:1x3x224x224",
        help="shape of an ONNX input with symbolic dims (repeat for several "
        "inputs); a symbolic batch defaults to 1",
    )


def _add_allow_unmatched_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-unmatched",
        action="store_true",
        help="compile even when manifest entries match no weight by name or by value "
        "(they are left alone)",
    )


def _add_model_arguments(parser: argparse.ArgumentParser):
    """The model, its shapes and structure source, target and tuning logs; returns the
    mutually exclusive group of the structure source (``--manifest``, ``--detect``)."""
    parser.add_argument("model", help="an ONNX file or a torch.export program (.pt2)")
    _add_input_shape_argument(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--manifest",
        help="manifest JSON (default: <stem>.manifest.json next to "
        "the model, else the ONNX metadata)",
    )
    source.add_argument(
        "--detect",
        action="store_true",
        help="find structures in the weights by value instead of a manifest",
    )
    _add_allow_unmatched_argument(parser)
    _add_target_arguments(parser, "x86 (this host, default), aarch64 (generic NEON) or cuda")
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        help="largest accepted weight residual (default: 100 x the dtype's eps)",
    )
    logs = parser.add_mutually_exclusive_group()
    logs.add_argument(
        "--tuning-logs",
        default=None,
        metavar="DIR",
        help="apply the target's tuning database under DIR (DIR/<target key>, or DIR itself "
        "when it holds one); default: $STRUCTCONV_TUNING_LOGS or the user cache, else the "
        "logs shipped with the package",
    )
    logs.add_argument(
        "--no-logs", action="store_true", help="ignore tuning logs: hand schedules only"
    )
    return source


def _tuning_logs(args: argparse.Namespace, target):
    """``compile_model``'s ``tuning_logs`` from ``--tuning-logs`` / ``--no-logs``.

    ``--tuning-logs DIR`` is a root like ``$STRUCTCONV_TUNING_LOGS``: the target's database is
    ``DIR/<target key>`` (or ``DIR`` itself when it holds one). Without it, ``True``: the
    user's database of the target, else the shipped one.
    """
    from tvm_structconv.tuning_logs import database_dir

    if args.no_logs:
        return False
    return str(database_dir(target, args.tuning_logs)) if args.tuning_logs else True


# --------------------------------------------------------------------------- subcommands
def cmd_models(args: argparse.Namespace) -> int:
    from tvm_structconv.models import create_structured, list_models

    for name in list_models():
        cost = create_structured(name, image_size=args.image_size).cost()
        print(f"{name:<14} {cost.summary()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tvm_structconv.export import export
    from tvm_structconv.models import create_structured
    from tvm_structconv.plan import Plan

    plan = Plan.from_argument(args.plan)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    built = create_structured(args.name, plan=plan, seed=args.seed, image_size=args.image_size)
    print(f"plan {args.plan}: {len(built.structures)} layers structured")
    for line in _skipped_summary(plan.skipped(built.model)):
        print(line)
    for suffix in (".onnx", ".pt2"):
        path = out / f"{args.name}{suffix}"
        export(built.model, path, built.example_input, built.manifest)
        print(path)
    return 0


def _skipped_summary(skipped: dict, examples: int = 3) -> list:
    """One line per reason a plan left layers alone: the count and the first few names."""
    by_reason: dict = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason.split(" (has ")[0], []).append(name)
    lines = []
    for reason, names in by_reason.items():
        shown = ", ".join(names[:examples]) + (" …" if len(names) > examples else "")
        lines.append(f"left alone: {len(names)} layers, {reason}: {shown}")
    return lines


def _compile_reported(args: argparse.Namespace):
    """Import and compile ``args.model`` as the flags say; print notes and the rewrite report."""
    from tvm_structconv.build import compile_model

    imported = _load(args)
    target = _target(args)
    compiled = compile_model(
        imported,
        target,
        structured=not args.original,
        tol=args.tol,
        match_by_value=args.detect,
        tuning_logs=_tuning_logs(args, target),
        allow_unmatched=args.allow_unmatched,
    )
    for note in compiled.notes:
        print(f"note: {note}")
    print(
        f"manifest: {imported.manifest_origin}; BatchNorm folded into {len(compiled.folded)} convs"
    )
    if compiled.report is not None:
        print(compiled.report.format())
        _warn_if_nothing_detected(args, compiled.report)
    return imported, compiled


def _warn_if_nothing_detected(args: argparse.Namespace, report) -> None:
    """Say so on stderr when ``--detect`` found no structured weight at all."""
    if args.detect and not report.rewritten:
        print(
            f"structconv: warning: --detect found no structured weight in {args.model}: nothing "
            "was rewritten (were the weights projected with tvm_structconv.nn.structurize "
            "before export?)",
            file=sys.stderr,
        )


def cmd_compile(args: argparse.Namespace) -> int:
    _, compiled = _compile_reported(args)
    compiled.export(args.output)
    print(f"wrote {args.output} ({compiled.target})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from tvm_structconv.build import compile_model, max_errors
    from tvm_structconv.oracle import reference_outputs

    imported = _load(args)
    inputs = [spec.random(args.seed) for spec in imported.inputs]
    expected = reference_outputs(imported, inputs)
    oracle = "onnxruntime" if imported.kind == "onnx" else "torch"
    worst = 0.0
    target = _target(args)
    for structured in (False, True):
        compiled = compile_model(
            imported,
            target,
            structured=structured,
            tol=args.tol,
            match_by_value=args.detect,
            tuning_logs=_tuning_logs(args, target),
            allow_unmatched=args.allow_unmatched,
        )
        absolute, relative = max_errors(compiled.run(*inputs), expected)
        worst = max(worst, relative)
        label = "structured" if structured else "original"
        if structured:
            _warn_if_nothing_detected(args, compiled.report)
        extra = f" ({len(compiled.report.rewritten)} layers rewritten)" if structured else ""
        print(
            f"{label:<10} vs {oracle}: max abs error {absolute:.3e}, max rel error "
            f"{relative:.3e}{extra}"
        )
    if worst > args.rtol:
        print(f"FAILED: relative error {worst:.3e} > {args.rtol:.1e}")
        return 1
    print(f"OK: both builds match {oracle} within {args.rtol:.1e}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from tvm_structconv.deploy import deploy, run_bundle
    from tvm_structconv.oracle import reference_outputs
    from tvm_structconv.runtime_libs import host_arch
    from tvm_structconv.toolchain import RunnerError

    imported, compiled = _compile_reported(args)
    inputs = [spec.random(args.seed) for spec in imported.inputs]
    bundle = deploy(
        compiled,
        imported,
        args.output,
        inputs,
        reference_outputs(imported, inputs),
        build=not args.no_build,
    )
    print(f"wrote {bundle.folder} ({bundle.arch}: model.so, model.json, runner sources, sample)")
    print(f"runner: {bundle.runner}" if bundle.runner else bundle.build_hint)
    if not args.check:
        return 0
    if bundle.runner is None:
        raise RunnerError(f"--check needs the runner: {bundle.build_hint}")
    done = run_bundle(
        bundle.folder,
        expect=bundle.folder / "sample" / "expected.bin",
        repeat=args.repeat,
        rtol=args.rtol,
    )
    print(done.stdout.rstrip())
    if done.returncode not in (0, 1):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunnerError(f"the runner failed: {last}")
    if bundle.arch != host_arch():
        print(
            f"(ran under qemu-{bundle.arch}-static: a correctness check; the timing means "
            "nothing, measure on the board or through TVM RPC)"
        )
    return done.returncode


def cmd_tune(args: argparse.Namespace) -> int:
    from tvm_structconv.targets import target_key
    from tvm_structconv.threads import pinned_threads
    from tvm_structconv.tune import tune_model
    from tvm_structconv.tuning_logs import user_logs_dir

    # candidates are timed in this process: its thread pool (started at the first parallel run)
    # must use the target's cores, not TVM's default of the physical ones
    with pinned_threads():
        imported = _load(args)
        target = _target(args)
        variants = [True, False] if args.original else [True]
        for structured in variants:
            label = "structured" if structured else "original"
            print(
                f"tuning the {label} model's convs for {target_key(target)} ({args.trials} "
                f"trials) into {user_logs_dir(target, args.tuning_logs)}",
                file=sys.stderr,
                flush=True,
            )
            result = tune_model(
                imported,
                target,
                trials=args.trials,
                structured=structured,
                # the default root: tune_model starts a new folder from the shipped records
                folder=user_logs_dir(target, args.tuning_logs) if args.tuning_logs else None,
                trials_per_iter=args.trials_per_iter,
                rpc_tracker=args.rpc_tracker,
                device_key=args.device_key,
                allow_unmatched=args.allow_unmatched,
                seed=args.seed,
            )
            print(f"{label}:")
            print(result.table())
            warning = result.coverage_warning()
            if warning:
                print(f"structconv: warning: {warning}", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from tvm_structconv.benchmark import run_benchmark

    def progress(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    report = run_benchmark(
        args.model,
        targets=args.targets.split(","),
        peers=[p for p in args.peers.split(",") if p],
        threads=args.threads,
        repeat=args.repeat,
        rounds=args.rounds,
        manifest=args.manifest,
        rpc_tracker=args.rpc_tracker,
        device_key=args.device_key,
        workdir=args.workdir,
        image_size=args.image_size,
        progress=progress,
        input_shapes=_input_shapes(args),
    )
    print(report.format())
    if args.json:
        report.save_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from tvm_structconv.planner import (
        UNIFORM_PLANS,
        FrontierPoint,
        plan_model,
        plot_frontier,
        uniform_point,
    )
    from tvm_structconv.threads import pinned_threads

    def progress(message: str) -> None:
        print(f"[plan] {message}", file=sys.stderr, flush=True)

    with pinned_threads():  # kernels are timed in this process: its pool takes this count
        result = plan_model(
            args.model,
            _target(args),
            speedup=args.speedup,
            latency_ms=args.latency_ms,
            image_size=args.image_size,
            seed=args.seed,
            input_shapes=_input_shapes(args),
            rpc_tracker=args.rpc_tracker,
            device_key=args.device_key,
            calibration=args.calibration,
            measure=not args.no_measure,
            tries=args.tries,
            rounds=args.rounds,
            progress=progress,
        )
    if args.output:
        result.plan.save(args.output, info=result.info())
        print(f"wrote {args.output}")
    else:
        import json

        print(json.dumps(result.plan.to_json()))
    if args.plot is not None:
        path = args.plot or str(
            Path(args.output or f"{result.model}-plan.json").with_suffix(".png")
        )
        uniform = []
        for text in UNIFORM_PLANS:
            try:
                uniform.append(uniform_point(result, text))
            except ValueError as error:
                progress(f"uniform plan left off the plot: {error}")
        measured = result.measured_speedup
        planned = FrontierPoint(
            "plan",
            result.predicted_ms,
            result.total_damage,
            result.choice,
            None if measured is None else result.original_ms / measured,
        )
        plot_frontier(result, path, uniform, [planned])
        print(f"wrote {path}")
    print(result.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tvm_structconv.threads import available_cores, pinned_threads

    # TVM's pool defaults to physical cores (1 on a 2-vCPU SMT machine): use every core given
    with pinned_threads(args.threads or available_cores()) as threads:
        return _demo(args, threads)


def _demo(args: argparse.Namespace, threads: int) -> int:
    """The demo's steps, with TVM's thread count already pinned to ``threads``."""
    from tvm_structconv.build import compile_model, max_errors, prepare_module
    from tvm_structconv.export import export
    from tvm_structconv.frontend import load_model
    from tvm_structconv.models import create_structured
    from tvm_structconv.oracle import reference_outputs
    from tvm_structconv.timing import measure_latency

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="structconv-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    progress = Progress(7)
    built = progress.run(
        f"building structured {args.model} ({args.image_size}px)",
        lambda: create_structured(args.model, image_size=args.image_size),
    )
    onnx_path, pt2_path = workdir / f"{args.model}.onnx", workdir / f"{args.model}.pt2"

    def export_both():
        export(built.model, onnx_path, built.example_input, built.manifest)
        export(built.model, pt2_path, built.example_input, built.manifest)

    progress.run(f"exporting {onnx_path.name} and {pt2_path.name} to {workdir}", export_both)
    imported = progress.run("importing the ONNX model into Relax", lambda: load_model(onnx_path))
    pt2_report = progress.run(
        "importing the .pt2 program and rewriting it (check)",
        lambda: prepare_module(load_model(pt2_path)).report,
    )
    original = progress.run(
        "compiling the original model for this CPU",
        lambda: compile_model(imported, "x86", structured=False),
    )
    structured = progress.run(
        "compiling the structured model for this CPU",
        lambda: compile_model(imported, "x86", structured=True),
    )
    inputs = [built.example_input.numpy()]

    def time_both():
        rounds = {"original": None, "structured": None}
        for _ in range(args.rounds):  # interleaved, so drift hits both alike
            for label, model in (("original", original), ("structured", structured)):
                latency = measure_latency(model, inputs, repeat=args.repeat)
                rounds[label] = latency if rounds[label] is None else rounds[label].merged(latency)
        return rounds

    latency = progress.run(
        f"timing both ({args.rounds} interleaved rounds of {args.repeat})", time_both
    )
    # onnxruntime only after the timing: its idle worker threads would slow TVM
    expected = reference_outputs(imported, inputs)
    errors = {
        label: max_errors(model.run(*inputs), expected)
        for label, model in (("original", original), ("structured", structured))
    }
    report = structured.report
    cost = built.cost()
    print()
    print(
        report.format()
        if args.verbose
        else f"{len(report.rewritten)} of {len(report.layers)} conv/linear layers rewritten "
        f"({len(pt2_report.rewritten)} through the .pt2 frontend); "
        f"BatchNorm folded into {len(structured.folded)} convs"
    )
    for label, model in (("original", original), ("structured", structured)):
        print(
            f"{label}: "
            + (
                f"tuned schedules for {len(model.tuned)} functions from the tuning log, hand "
                "schedules for the rest"
                if model.tuned
                else "hand schedules (the tuning log of this CPU, if any, holds none of its "
                "functions)"
            )
        )
    print()
    header = f"{'':<11}{'params':>10}{'GMAC':>8}{'median ms':>11}{'p90 ms':>9}{'max rel err':>13}"
    print(f"{args.model}, batch 1, fp32, {threads} threads, {structured.target}")
    print(header)
    rows = (
        ("original", cost.original_params, cost.original_macs),
        ("structured", cost.structured_params, cost.structured_macs),
    )
    for label, params, macs in rows:
        print(
            f"{label:<11}{params / 1e6:>9.2f}M{macs / 1e9:>8.2f}"
            f"{latency[label].median_ms:>11.2f}{latency[label].p90_ms:>9.2f}"
            f"{errors[label][1]:>13.2e}"
        )
    speedup = latency["original"].median_ms / latency["structured"].median_ms
    print(
        f"speedup {speedup:.2f}x (MAC ratio {cost.mac_ratio:.2f}x); "
        f"outputs checked against onnxruntime"
    )
    worst = max(relative for _, relative in errors.values())
    if worst > args.rtol:
        print(f"FAILED: relative error {worst:.3e} > {args.rtol:.1e}")
        return 1
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``structconv``."""
    from tvm_structconv.models.structured import DEFAULT_PLAN

    parser = argparse.ArgumentParser(
        prog="structconv",
        description="Compile models with Structured Convolutions into sum-pool + small-conv "
        "kernels with Apache TVM.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of one line",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the main job: built-in structured model, exported, "
        "compiled original vs structured, checked and timed",
    )
    demo.add_argument("--model", default="resnet18", help="built-in model (default resnet18)")
    demo.add_argument("--image-size", type=int, default=224)
    demo.add_argument("--repeat", type=int, default=5, help="timed repeats per round")
    demo.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    demo.add_argument("--threads", type=int, default=None, help="TVM threads (default: all cores)")
    demo.add_argument(
        "--rtol",
        type=float,
        default=1e-3,
        help="largest accepted output error relative to the output's magnitude",
    )
    demo.add_argument("--workdir", help="where the exported models go (default: a temp dir)")
    demo.add_argument("--verbose", action="store_true", help="print the per-layer report")
    demo.set_defaults(func=cmd_demo)

    models = commands.add_parser("models", help="list the built-in models with their costs")
    models.add_argument("--image-size", type=int, default=224)
    models.set_defaults(func=cmd_models)

    export = commands.add_parser(
        "export", help="export a built-in structured model to ONNX and .pt2 with its manifest"
    )
    export.add_argument("name", help="built-in model name (see `structconv models`)")
    export.add_argument("-o", "--output", required=True, help="output folder")
    export.add_argument(
        "--plan",
        default=DEFAULT_PLAN,
        help="structure plan: rule syntax or a plan file (.json, as `structconv plan` writes) "
        "(default %(default)s)",
    )
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--image-size", type=int, default=224)
    export.set_defaults(func=cmd_export)

    compile_ = commands.add_parser("compile", help="compile a model into a shared library")
    _add_model_arguments(compile_).add_argument(
        "--plan",
        metavar="PLAN",
        help="project the weights onto a plan (a plan file as `structconv plan` writes, or "
        "rule syntax) and compile that: the layers it structures lose what lies outside "
        "their structure",
    )
    compile_.add_argument("-o", "--output", required=True, help="output library (.so)")
    compile_.add_argument(
        "--original",
        action="store_true",
        help="compile without the structured rewrite (the baseline)",
    )
    compile_.set_defaults(func=cmd_compile)

    verify = commands.add_parser(
        "verify",
        help="compile original and structured and compare "
        "both with onnxruntime (ONNX) or torch (.pt2)",
    )
    _add_model_arguments(verify)
    verify.add_argument(
        "--rtol",
        type=float,
        default=1e-3,
        help="largest accepted error relative to the output's magnitude",
    )
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    verify.set_defaults(func=cmd_verify)

    deploy = commands.add_parser(
        "deploy",
        help="compile a model into a folder a board runs "
        "without Python: library, model.json, C++ runner, sample",
    )
    _add_model_arguments(deploy)
    deploy.add_argument("-o", "--output", required=True, help="bundle folder")
    deploy.add_argument(
        "--original",
        action="store_true",
        help="compile without the structured rewrite (the baseline)",
    )
    deploy.add_argument(
        "--no-build", action="store_true", help="write the runner's sources without building it"
    )
    deploy.add_argument(
        "--check",
        action="store_true",
        help="run the bundle here (under qemu for aarch64) on the sample input "
        "and compare with the reference runtime",
    )
    deploy.add_argument(
        "--rtol",
        type=float,
        default=1e-4,
        help="largest accepted error of --check relative to the output's magnitude",
    )
    deploy.add_argument("--repeat", type=int, default=10, help="timed runs of --check")
    deploy.add_argument("--seed", type=int, default=0, help="seed of the sample input")
    deploy.set_defaults(func=cmd_deploy)
    tune = commands.add_parser(
        "tune",
        help="tune the model's convs with MetaSchedule (XGBoost "
        "cost model) into tuning_logs/<target>/, which compile applies",
    )
    tune.add_argument("model", help="an ONNX file or a torch.export program (.pt2)")
    _add_input_shape_argument(tune)
    tune_source = tune.add_mutually_exclusive_group()
    tune_source.add_argument("--manifest", help="manifest JSON (default: sidecar or ONNX metadata)")
    tune_source.add_argument(
        "--detect",
        action="store_true",
        help="find structures in the weights by value instead of a manifest",
    )
    _add_allow_unmatched_argument(tune)
    _add_target_arguments(tune, "x86 (this host, default) or aarch64 (needs --rpc-tracker)")
    tune.add_argument(
        "--trials",
        type=int,
        default=256,
        help="measured candidates per model, shared out over its convs (default %(default)s)",
    )
    tune.add_argument(
        "--original",
        action="store_true",
        help="also tune the original model's convs (same budget), for fair comparisons",
    )
    tune.add_argument(
        "--trials-per-iter",
        type=int,
        default=16,
        help="candidates built and measured per round (default %(default)s)",
    )
    tune.add_argument(
        "--tuning-logs",
        default=None,
        metavar="DIR",
        help="root of the tuning logs, like $STRUCTCONV_TUNING_LOGS: records go to "
        "DIR/<target key>/ (default: $STRUCTCONV_TUNING_LOGS, else the user cache "
        "~/.cache/tvm_structconv/tuning_logs); an existing database is added to",
    )
    tune.add_argument(
        "--rpc-tracker", help="HOST:PORT of a TVM RPC tracker: time candidates on its devices"
    )
    tune.add_argument("--device-key", help="key the devices registered under")
    tune.add_argument("--seed", type=int, default=None, help="seed of the search")
    tune.set_defaults(func=cmd_tune)

    plan = commands.add_parser(
        "plan",
        help="choose each layer's structure for a latency budget on a target, from latencies "
        "measured there: writes a plan that export / compile --plan take",
    )
    plan.add_argument("model", help="built-in model name, ONNX file or .pt2 program")
    budget = plan.add_mutually_exclusive_group(required=True)
    budget.add_argument("--speedup", type=float, help="speedup over the original build (1.6)")
    budget.add_argument("--latency-ms", type=float, help="latency budget in milliseconds")
    plan.add_argument("-o", "--output", help="plan file to write (default: print the plan)")
    _add_input_shape_argument(plan)
    _add_target_arguments(plan, "x86 (this host, default) or aarch64 (with --rpc-tracker)")
    plan.add_argument(
        "--rpc-tracker", help="HOST:PORT of a TVM RPC tracker: time kernels on its devices"
    )
    plan.add_argument("--device-key", help="key the devices registered under")
    plan.add_argument(
        "--calibration",
        metavar="DATA.npy",
        help="inputs (B x input shape): damage is the output change on them, per layer "
        "(default: the weights' projection residual)",
    )
    plan.add_argument(
        "--plot",
        nargs="?",
        const="",
        metavar="PNG",
        help="draw damage vs latency: the planner's frontier and the uniform plans "
        "(default path: the plan file's with .png)",
    )
    plan.add_argument("--image-size", type=int, default=224, help="input size of a built-in model")
    plan.add_argument("--seed", type=int, default=0, help="weights of a built-in model, inputs")
    plan.add_argument(
        "--rounds", type=int, default=10, help="alternating rounds timing the whole models"
    )
    plan.add_argument(
        "--tries",
        type=int,
        default=3,
        help="planned builds measured at most: each next one corrects the request by how far "
        "the last missed it (default %(default)s)",
    )
    plan.add_argument(
        "--no-measure",
        action="store_true",
        help="do not compile and time the planned model (the summary gives the prediction)",
    )
    plan.set_defaults(func=cmd_plan)

    bench = commands.add_parser(
        "bench",
        help="latency of original vs structured through TVM on "
        "each target, and of the peer runtimes",
    )
    bench.add_argument("model", help="ONNX file, .pt2 program or built-in model name")
    _add_input_shape_argument(bench)
    bench.add_argument("--manifest", help="manifest JSON (default: ONNX metadata or sidecar)")
    bench.add_argument("--targets", default="x86", help="comma-separated: x86,cuda,aarch64")
    bench.add_argument(
        "--peers",
        default="onnxruntime,torch,inductor",
        help="comma-separated peers on this host ('' for none)",
    )
    bench.add_argument(
        "--threads", type=int, default=None, help="threads of every runtime (default: all cores)"
    )
    bench.add_argument("--repeat", type=int, default=10, help="samples per round")
    bench.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    bench.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size of a built-in model (default 224); a model file keeps its own",
    )
    bench.add_argument(
        "--rpc-tracker",
        help="HOST:PORT of a TVM RPC tracker: measure the TVM builds on its devices",
    )
    bench.add_argument("--device-key", help="key the devices registered under")
    bench.add_argument("--workdir", help="where libraries and exports go (default: a temp dir)")
    bench.add_argument("--json", help="write every row and raw sample as JSON")
    bench.add_argument("--plot", help="write a bar chart (PNG)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``structconv``; user errors become one line on stderr and exit status 2."""
    from tvm_structconv.errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"structconv: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug: one line unless --debug asks for the traceback
        if args.debug:
            raise
        from tvm_structconv.messages import one_line

        print(
            f"structconv: internal error: {one_line(error)} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
