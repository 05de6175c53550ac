"""Auto-tuning with MetaSchedule: tasks, search, and the per-target tuning logs.

``structconv tune MODEL --target T --trials N`` (:func:`tune_model`) compiles the model up to
operator fusion exactly as :func:`~tvm_structconv.build.compile_model` does
(:func:`~tvm_structconv.build.fusion_passes`), takes every fused function holding a conv (the
fused structured op, and the ordinary convs emitted with the trivial structure) as a task, and
searches their schedules with MetaSchedule's evolutionary search guided by its XGBoost cost
model. The space of a conv task is the hand schedule with sampled tile sizes (rows per task,
pixels per accumulator tile, output-channel chunks; see
:func:`tvm_structconv.schedules.cpu.conv.schedule_structured_conv2d`), plus the hand schedule as it
is. Pools, transposes and elementwise functions are memory-bound and keep the hand rules, and
so do the convs that run as Winograd (:mod:`tvm_structconv.schedules.cpu.winograd`; their
template has no sampled tile sizes yet): they are no tasks.

Measured records go to a MetaSchedule JSON database in the user's ``<root>/<target key>/``
(:func:`~tvm_structconv.tuning_logs.user_logs_dir`: ``$STRUCTCONV_TUNING_LOGS`` or the user's
cache folder, never the package; one folder per target because the database is not
target-aware). A new folder starts from the shipped records of the same CPU, if any. Tuning
again adds trials to the same database and starts its search from the best records already
there. ``compile`` applies the database of its target when it exists
(:func:`~tvm_structconv.tuning_logs.logs_dir`).

Candidates are built here (``LocalBuilder``) and timed either here (in this process, with the
target's thread count, one at a time while nothing else runs) or on the servers of an RPC
tracker (``RPCRunner``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import tvm
import tvm_ffi
from tvm import relax

from tvm_structconv.build import fusion_passes, prepare_module
from tvm_structconv.frontend import ImportedModel
from tvm_structconv.ops import find_structured_block
from tvm_structconv.remote import parse_tracker
from tvm_structconv.schedules.packing import conv_layout
from tvm_structconv.schedules.target_info import target_cores
from tvm_structconv.targets import make_target
from tvm_structconv.threads import pinned_threads
from tvm_structconv.toolchain import DeviceError, check_runnable
from tvm_structconv.tuning_logs import open_database, seed_from_shipped, user_logs_dir

if TYPE_CHECKING:  # MetaSchedule is imported when tuning or applying a database
    from tvm.s_tir import meta_schedule as ms

_LOG = logging.getLogger(__name__)

__all__ = [
    "TaskResult",
    "TuneError",
    "TuneResult",
    "called_functions",
    "conv_calls",
    "conv_tasks",
    "conv_tune_context",
    "fuse",
    "tune_model",
]

#: Seconds a candidate may take to build (LocalBuilder's 30 s default is too short on a busy
#: 2-core machine: a fused conv's LLVM build alone takes several seconds there).
BUILD_TIMEOUT = 120.0


class TuneError(Exception):
    """A tuning request that cannot be carried out (target, runner, empty model)."""


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """``mod`` through :func:`~tvm_structconv.build.fusion_passes`: what gets scheduled."""
    with target:
        return tvm.transform.Sequential(fusion_passes(target))(mod)


def called_functions(mod: tvm.IRModule) -> List[str]:
    """The PrimFuncs the Relax functions of ``mod`` call (``call_tir``), in call order."""
    calls: List[str] = []

    def visit(expr) -> None:
        if (
            isinstance(expr, relax.Call)
            and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == "relax.call_tir"
        ):
            calls.append(expr.args[0].name_hint)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


def conv_calls(mod: tvm.IRModule, target: tvm.target.Target) -> List[Tuple[str, tvm.tirx.PrimFunc]]:
    """``(function name, PrimFunc)`` of every conv call of a prepared module, in call order
    (direct and Winograd).

    ``mod`` is what :func:`~tvm_structconv.build.prepare_module` returns; it is taken through
    :func:`fuse`, so each function is a conv as the scheduled build compiles it: with its fused
    epilogue (bias, ReLU, residual add), in the target's layout, before any schedule. Calls
    are in the model's call order, which is not always the rewrite report's order (a ResNet
    block's downsample conv is reported first and called last).
    """
    fused = fuse(mod, target)
    functions = {
        gvar.name_hint: func
        for gvar, func in fused.functions.items()
        if isinstance(func, tvm.tirx.PrimFunc)
    }
    return [
        (name, functions[name])
        for name in called_functions(fused)
        if find_structured_block(functions[name]) is not None or is_winograd(functions[name])
    ]


def is_winograd(func: tvm.tirx.PrimFunc) -> bool:
    """Whether ``func`` is a structured conv computed by Winograd
    (:mod:`tvm_structconv.winograd`; a conv call, but not a tuning task)."""
    from tvm import s_tir

    from tvm_structconv.schedules.cpu.winograd import find_winograd_block

    return find_winograd_block(s_tir.Schedule(func)) is not None


def conv_tasks(mod: tvm.IRModule, target: tvm.target.Target) -> List[ms.ExtractedTask]:
    """The tuning tasks of a prepared module: one per distinct fused function holding a conv.

    ``mod`` is the module :func:`~tvm_structconv.build.prepare_module` returns (NHWC); it is taken
    through :func:`~tvm_structconv.build.fusion_passes`, the passes the scheduled build runs
    before it looks functions up in a database, so tuned and compiled functions are the same.
    Structurally equal functions are one task, weighted by how often the model calls them.
    """
    from tvm.s_tir import meta_schedule as ms

    fused = fuse(mod, target)
    counts = collections.Counter(called_functions(fused))
    tasks: Dict[int, list] = {}
    for gvar, func in fused.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or find_structured_block(func) is None:
            continue
        task_mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        key = tvm_ffi.structural_hash(task_mod)
        weight = counts.get(gvar.name_hint, 1)
        if key in tasks:
            tasks[key][2] += weight
        else:
            tasks[key] = [gvar.name_hint, task_mod, weight]
    return [
        ms.ExtractedTask(name, task_mod, target, [task_mod], weight)
        for name, task_mod, weight in tasks.values()
    ]


@dataclass
class TaskResult:
    """One tuned function.

    Attributes
    ----------
    name
        The fused function (``fused_structured_conv2d3_add_relu``).
    weight
        How often the model calls it.
    trials
        Candidates measured for it in this run.
    best_ms
        The fastest time the database holds for it (mean of the runs), ms; ``None`` if no
        candidate ever ran.
    """

    name: str
    weight: int
    trials: int = 0
    best_ms: Optional[float] = None


@dataclass
class TuneResult:
    """What a tuning run did.

    Attributes
    ----------
    folder
        The target's tuning-log folder the records went to.
    tasks
        One entry per task.
    records_before, records_after
        Records in the database before and after the run (resuming adds to it).
    seconds
        Wall time of the run.
    trials_per_iter
        Candidates per round: MetaSchedule's scheduler first gives each task one round.
    """

    folder: Path
    tasks: List[TaskResult] = field(default_factory=list)
    records_before: int = 0
    records_after: int = 0
    seconds: float = 0.0
    trials_per_iter: int = 16

    def untried(self) -> List[TaskResult]:
        """The tasks this run measured no candidate of."""
        return [task for task in self.tasks if task.trials == 0]

    def coverage_warning(self) -> Optional[str]:
        """A one-line warning when some task got no trial (``None`` when all got some).

        The scheduler gives every task one round of ``trials_per_iter`` candidates before it
        picks by gain, so ``tasks × trials_per_iter`` trials reach every task.
        """
        untried = self.untried()
        if not untried:
            return None
        needed = len(self.tasks) * self.trials_per_iter
        return (
            f"{len(untried)} of {len(self.tasks)} tasks got no trial (the budget ran out first); "
            f"--trials {needed} (tasks x --trials-per-iter {self.trials_per_iter}) reaches "
            "every task"
        )

    def estimated_ms(self) -> float:
        """The tasks' best times weighted by their call counts (the model's conv time), ms."""
        return sum(t.best_ms * t.weight for t in self.tasks if t.best_ms is not None)

    def table(self) -> str:
        """A plain-text table of the tasks."""
        lines = [f"{'task':<44} {'calls':>5} {'trials':>6} {'best us':>10}"]
        for t in self.tasks:
            best = f"{1e3 * t.best_ms:.1f}" if t.best_ms is not None else "n/a"
            lines.append(f"{t.name:<44} {t.weight:>5} {t.trials:>6} {best:>10}")
        lines.append(
            f"conv time (best records x calls) {self.estimated_ms():.3f} ms; database "
            f"{self.records_before} -> {self.records_after} records in {self.folder}; "
            f"{self.seconds:.0f} s"
        )
        return "\n".join(lines)


def build_without_intrinsics(
    mod: tvm.IRModule, target: tvm.target.Target, _params
) -> tvm.runtime.Module:
    """MetaSchedule's ``default_build`` without its import of TVM's tensor intrinsics.

    That import costs about 25 s in every builder process, and LocalBuilder starts fresh
    processes for each batch; the conv spaces here use no tensor intrinsic.
    """
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build(mod, target=target)


def _search_space() -> ms.space_generator.SpaceGenerator:
    """Post-order application of the custom rule alone, with CPU postprocessors and mutators.

    Every task holds the conv block whose ``schedule_rule`` names the hand schedule, which
    then schedules the whole function; no generic rule is needed (nor the import of the
    tensor intrinsics that building the default rule list costs).
    """
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.PostOrderApply(
        sch_rules=[ms.schedule_rule.ApplyCustomRule()],
        postprocs=[
            ms.postproc.DisallowDynamicLoop(),
            ms.postproc.RewriteParallelVectorizeUnroll(),
            ms.postproc.RewriteReductionBlock(),
        ],
        mutator_probs={ms.mutator.MutateTileSize(): 1.0},
    )


#: The module of TVM's tensor intrinsics, which every ``TuneContext`` imports.
_TENSOR_INTRINSICS = "tvm.s_tir.tensor_intrin"


@contextlib.contextmanager
def _tensor_intrinsics_skipped():
    """An empty stand-in for :data:`_TENSOR_INTRINSICS` unless it was imported already."""
    if _TENSOR_INTRINSICS in sys.modules:
        yield
        return
    stand_in = types.ModuleType(_TENSOR_INTRINSICS)
    sys.modules[_TENSOR_INTRINSICS] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_TENSOR_INTRINSICS) is stand_in:
            del sys.modules[_TENSOR_INTRINSICS]


def conv_tune_context(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    task_name: str = "main",
    seed: Optional[int] = None,
) -> ms.TuneContext:
    """The MetaSchedule context of one conv task: :func:`_search_space`, evolutionary search.

    ``TuneContext`` imports TVM's tensor intrinsics, for the default rules' tensorization,
    which the conv spaces never use. That import (once a process) parses about 500
    TVMScript functions, and each parse reads the source of every frame on the stack
    (``inspect`` scans all loaded modules for each): 27 s in a fresh process here, about
    140 s in a test process that has loaded torch. The context is made with an empty module
    in its place (a process that has imported them keeps them).
    """
    from tvm.s_tir import meta_schedule as ms

    with _tensor_intrinsics_skipped():
        return ms.TuneContext(
            mod=mod,
            target=target,
            space_generator=_search_space(),
            search_strategy="evolutionary",
            task_name=task_name,
            num_threads=target_cores(target),
            rand_state=-1 if seed is None else seed,
        )


def _progress_callback(total: int, show: bool):
    """A MetaSchedule measure callback that advances a progress bar per measured candidate."""
    from tqdm import tqdm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self) -> None:
            self.bar = tqdm(total=total, desc="tuning", unit="trial", disable=not show)
            self.trials: Dict[int, int] = {}

        def apply(
            self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
        ) -> None:
            self.trials[task_id] = self.trials.get(task_id, 0) + len(measure_candidates)
            errors = [b.error_msg for b in builder_results if b.error_msg]
            errors += [r.error_msg for r in runner_results if r.error_msg]
            failed = len(errors)
            for error in errors[:1]:
                _LOG.warning("candidate of task %d failed: %s", task_id, error)
            self.bar.update(len(measure_candidates))
            if failed:
                self.bar.set_postfix(build_failures=failed)

    return Progress()


def _in_process_runner(evaluator: ms.runner.EvaluatorConfig) -> ms.runner.Runner:
    """A runner that times each built candidate in this process, one after the other.

    MetaSchedule's ``LocalRunner`` times in a worker process while this one waits in a
    polling loop; on a 2-core machine with 2 timed threads that loop took a core from every
    timing (17 s per candidate instead of 1, and the numbers meaningless). The candidates are
    the project's own template, so running them in-process risks no crash.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

    fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")

    @derived_object
    class Done(ms.runner.PyRunnerFuture):
        def __init__(self, result) -> None:
            super().__init__()
            self._result = result

        def done(self) -> bool:
            return True

        def result(self):
            return self._result

    @derived_object
    class InProcess(ms.runner.PyRunner):
        def run(self, runner_inputs):
            futures = []
            for runner_input in runner_inputs:
                try:
                    module = tvm.runtime.load_module(str(runner_input.artifact_path))
                    args = alloc_argument_common(
                        fill, tvm.cpu(), [a.as_json() for a in runner_input.args_info], 1
                    )
                    costs = run_evaluator_common(module, tvm.cpu(), evaluator, args)
                    futures.append(Done(ms.runner.RunnerResult(costs, None)))
                except Exception as error:  # noqa: BLE001 - a failed candidate, reported
                    futures.append(Done(ms.runner.RunnerResult(None, f"in-process: {error}")))
            return futures

    return InProcess()


def _runner(
    target: tvm.target.Target, rpc_tracker: Optional[str], device_key: Optional[str], timeout: float
) -> ms.runner.Runner:
    """``RPCRunner`` on the tracker's servers, else ``LocalRunner`` (which needs this host)."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=50)
    if rpc_tracker:
        if not device_key:
            raise TuneError("--rpc-tracker needs --device-key (the key the servers registered)")
        host, port = parse_tracker(rpc_tracker)
        config = ms.runner.RPCConfig(
            tracker_host=host,
            tracker_port=port,
            tracker_key=device_key,
            session_timeout_sec=int(timeout),
        )
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)
    try:
        check_runnable(target)
    except DeviceError as error:
        raise TuneError(
            f"cannot time {target.kind.name} candidates here ({error}); "
            "give the RPC tracker of a device with --rpc-tracker"
        ) from None
    return _in_process_runner(evaluator)


def tune_model(
    imported: ImportedModel,
    target: Union[str, tvm.target.Target] = "x86",
    trials: int = 64,
    structured: bool = True,
    folder: Union[str, os.PathLike, None] = None,
    trials_per_iter: int = 16,
    rpc_tracker: Optional[str] = None,
    device_key: Optional[str] = None,
    progress: bool = True,
    seed: Optional[int] = None,
    timeout: float = 60.0,
    allow_unmatched: bool = False,
) -> TuneResult:
    """Tune the convs of ``imported`` for ``target`` with MetaSchedule and its XGBoost model.

    Parameters
    ----------
    imported
        The model (its manifest is used when ``structured``).
    target
        A target name or an LLVM :class:`tvm.target.Target`.
    trials
        Candidates to measure in this run, over all tasks (MetaSchedule's gradient task
        scheduler shares them out by expected gain).
    structured
        Tune the structured build's tasks; ``False`` tunes the original model's (its ordinary
        convs through the same template), for comparisons at equal effort.
    folder
        The database folder; by default the user's folder of the target
        (:func:`~tvm_structconv.tuning_logs.user_logs_dir`), started from the shipped records
        of its CPU when new. An existing database is added to, and its best records seed the
        search.
    trials_per_iter
        Candidates built and measured per round.
    rpc_tracker, device_key
        Time candidates on the servers registered under ``device_key`` at the tracker
        ``HOST:PORT`` instead of on this host.
    progress
        Show a progress bar (on stderr).
    seed
        Seed of the search.
    timeout
        Seconds a candidate may run.
    allow_unmatched
        See :func:`~tvm_structconv.build.prepare_module`.

    Raises
    ------
    TuneError
        For a non-CPU target, a target this host cannot run without an RPC tracker, a model
        without convs, or a non-positive ``trials``.
    """
    from tvm.s_tir import meta_schedule as ms

    started = time.perf_counter()
    if isinstance(target, str):
        target = make_target(target)
    if target.kind.name != "llvm":
        raise TuneError(
            f"tuning is implemented for CPU (llvm) targets, not {target.kind.name}: "
            "CUDA builds use the hand schedule of schedules/gpu/conv.py"
        )
    if trials < 1:
        raise TuneError(f"--trials must be positive, got {trials}")
    # before any work: a target this host cannot time without a tracker fails at once
    runner = _runner(target, rpc_tracker, device_key, timeout)
    mod = prepare_module(
        imported, structured, layout=conv_layout(target), allow_unmatched=allow_unmatched
    ).mod
    tasks = conv_tasks(mod, target)
    if not tasks:
        raise TuneError("the model has no conv to tune")
    if folder is None:
        folder = user_logs_dir(target)
        seed_from_shipped(folder, target)
    folder = Path(folder)
    database = open_database(folder)
    before = len(database)
    contexts = [
        conv_tune_context(task.dispatched[0], target, task.task_name, seed) for task in tasks
    ]
    callback = _progress_callback(trials, progress)
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    # TVM's thread pool takes its size when it starts (at its first parallel run); its default
    # is the physical cores (1 on a 2-vCPU machine), not the target's
    try:
        with pinned_threads(target_cores(target)):
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=[float(task.weight) for task in tasks],
                work_dir=str(folder / "logs"),
                max_trials_global=trials,
                num_trials_per_iter=min(trials_per_iter, trials),
                builder=ms.builder.LocalBuilder(
                    f_build=build_without_intrinsics, timeout_sec=BUILD_TIMEOUT
                ),
                runner=runner,
                database=database,
                cost_model=ms.cost_model.XGBModel(num_warmup_samples=0),
                measure_callbacks=(
                    ms.measure_callback.MeasureCallback.create("default") + [callback]
                ),
            )
    finally:
        callback.bar.close()
    result = TuneResult(
        folder,
        records_before=before,
        records_after=len(database),
        trials_per_iter=min(trials_per_iter, trials),
    )
    for index, task in enumerate(tasks):
        best = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
        runs = best[0].run_secs if best else None
        result.tasks.append(
            TaskResult(
                task.task_name,
                task.weight,
                callback.trials.get(index, 0),
                1e3 * sum(float(r) for r in runs) / len(runs) if runs else None,
            )
        )
    result.seconds = time.perf_counter() - started
    return result
