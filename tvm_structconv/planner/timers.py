"""Where the planner's latencies come from: this machine, or devices behind a TVM RPC tracker.

Both timers compile a kernel (a fused function of :mod:`tvm_structconv.planner.table`) with the
hand schedules, exactly as the scheduled build does, and report the **minimum** over samples:
on a shared machine, minima of alternating calls in one process are what stays stable.

* :class:`LocalTimer` times in this process with TVM's thread pool (``TVM_NUM_THREADS``,
  pinned by the caller before the first parallel run), all kernels round after round, so the
  kernels of a table are measured under the same load. Whole models alternate the same way.
* :class:`RemoteTimer` exports each kernel and sends it through
  :class:`~tvm_structconv.remote.RemoteDevices`: jobs spread over every server of the key in
  parallel; whole models alternate job by job.

Both subclass :class:`Timer` (the target, the samples per kernel, warm or cold weights).
"""

from __future__ import annotations

import abc
import tempfile
from pathlib import Path
from typing import Dict, Mapping, NamedTuple

import numpy as np
import tvm

from tvm_structconv.build import CompiledModel
from tvm_structconv.remote import RemoteDevices, RemoteError, RemoteJob
from tvm_structconv.toolchain import export_compiler
from tvm_structconv.transform import ApplySchedules

__all__ = [
    "KernelSampling",
    "LocalTimer",
    "RemoteTimer",
    "Timer",
    "compile_kernel",
    "kernel_arguments",
]


def compile_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target):
    """``func`` with the hand schedules of ``target``, compiled (a TIR executable, ``main``)."""
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target:
        scheduled = ApplySchedules(target)(module)
    return tvm.compile(scheduled, target=target)


def kernel_arguments(func: tvm.tirx.PrimFunc, seed: int = 0) -> list:
    """Random float arrays for each buffer of ``func`` (inputs and outputs alike)."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal([int(d) for d in param.shape]).astype(str(param.dtype))
        for param in func.params
    ]


#: ``time_evaluator``'s preprocessor that evicts every argument but the first (the input
#: activation) from the caches before each run: weights, bias and output come from memory.
COLD = "cache_flush_cpu_non_first_arg"


class KernelSampling(NamedTuple):
    """``time_evaluator``'s arguments for one round of a kernel (``number`` is always 1)."""

    repeat: int
    min_repeat_ms: int
    f_preproc: str


class Timer(abc.ABC):
    """What both timers share: the target, the samples and the timing mode.

    Parameters
    ----------
    target
        What kernels are compiled for.
    rounds
        Samples per kernel, taken round after round over all kernels.
    min_repeat_ms
        Warm timing: each sample is the mean of as many runs as last this long.
    cold
        Time each kernel run with its weights evicted from the caches first (``mode`` says
        which was used).

    Attributes
    ----------
    label
        Where the timer measures (``"local"``, ``"rpc-<key>"``): the latency table's file name.
    mode
        ``"cold weights"`` or ``"warm"``: recorded in the latency table's header.
    """

    label: str

    def __init__(
        self,
        target: tvm.target.Target,
        rounds: int = 5,
        min_repeat_ms: int = 20,
        cold: bool = False,
    ) -> None:
        self.target, self.rounds, self.min_repeat_ms = target, rounds, min_repeat_ms
        self.cold = cold
        self.mode = "cold weights" if cold else "warm"

    def kernel_sampling(self) -> KernelSampling:
        """How a kernel is sampled each round: cold, 3 samples of one run each after
        :data:`COLD`; warm, one sample, the mean of the runs filling ``min_repeat_ms``."""
        if self.cold:
            return KernelSampling(repeat=3, min_repeat_ms=0, f_preproc=COLD)
        return KernelSampling(repeat=1, min_repeat_ms=self.min_repeat_ms, f_preproc="")

    @abc.abstractmethod
    def time_kernels(self, kernels: Mapping[str, tvm.tirx.PrimFunc]) -> Dict[str, float]:
        """``{key: minimum ms}`` of each kernel (compiled with the hand schedules)."""

    @abc.abstractmethod
    def time_models(
        self, models: Mapping[str, CompiledModel], inputs: list, rounds: int = 10
    ) -> Dict[str, float]:
        """``{label: minimum ms}`` of whole models over ``rounds`` alternating samples."""


class LocalTimer(Timer):
    """Time on this machine, in this process.

    Parameters
    ----------
    target
        What kernels are compiled for (it must run here).
    rounds, min_repeat_ms, cold
        As for :class:`Timer`.
    """

    label = "local"

    def time_kernels(self, kernels: Mapping[str, tvm.tirx.PrimFunc]) -> Dict[str, float]:
        """``{key: minimum ms}`` of each kernel."""
        device = tvm.cpu()
        timers = {}
        for key, func in kernels.items():
            executable = compile_kernel(func, self.target)
            arguments = [tvm.runtime.tensor(a, device) for a in kernel_arguments(func)]
            executable.mod["main"](*arguments)
            timer = executable.mod.time_evaluator(
                "main", device, number=1, **self.kernel_sampling()._asdict()
            )
            timers[key] = (timer, arguments)
        best = {key: float("inf") for key in kernels}
        for _ in range(self.rounds):
            for key, (timer, arguments) in timers.items():
                best[key] = min(best[key], min(timer(*arguments).results) * 1e3)
        return best

    def time_models(
        self, models: Mapping[str, CompiledModel], inputs: list, rounds: int = 10
    ) -> Dict[str, float]:
        """``{label: minimum ms}`` of whole models, timed alternately in this process."""
        device = tvm.cpu()
        runs = {}
        for label, model in models.items():
            vm = model.load()
            arguments = [tvm.runtime.tensor(a, device) for a in inputs]
            vm["main"](*arguments)
            timer = vm.time_evaluator(
                "main", device, number=1, repeat=1, min_repeat_ms=5 * self.min_repeat_ms
            )
            runs[label] = (timer, arguments)
        best = {label: float("inf") for label in models}
        for _ in range(rounds):
            for label, (timer, arguments) in runs.items():
                best[label] = min(best[label], float(timer(*arguments).mean) * 1e3)
        return best


class RemoteTimer(Timer):
    """Time on the devices registered under ``key`` at a TVM RPC tracker.

    Parameters
    ----------
    target
        What kernels are compiled for (the devices' CPU).
    tracker
        ``HOST:PORT`` of the tracker.
    key
        The device key.
    rounds, min_repeat_ms, cold
        As for :class:`Timer` (samples per job).

    Raises
    ------
    RemoteError
        If the tracker is unreachable or has no server under the key.
    """

    def __init__(
        self,
        target: tvm.target.Target,
        tracker: str,
        key: str,
        rounds: int = 5,
        min_repeat_ms: int = 20,
        cold: bool = False,
    ) -> None:
        super().__init__(target, rounds, min_repeat_ms, cold)
        self.devices = RemoteDevices(tracker, key)
        self.devices.servers()  # fails at once when there is none
        self.label = f"rpc-{key}"

    def time_kernels(self, kernels: Mapping[str, tvm.tirx.PrimFunc]) -> Dict[str, float]:
        """``{key: minimum ms}`` of each kernel, jobs in parallel over the servers.

        Like :class:`LocalTimer`, round after round over all kernels (one job per kernel and
        round): a kernel's samples taken back to back would all share whatever disturbed the
        device in those seconds (measured: a table taken so had kernels up to 2x slow, and its
        plans missed their speedups by 12-15 %).
        """
        sampling = self.kernel_sampling()
        best = {key: float("inf") for key in kernels}
        with tempfile.TemporaryDirectory(prefix="structconv-plan-") as folder:
            jobs = []
            for key, func in kernels.items():
                library = Path(folder) / f"kernel_{key}.so"
                compile_kernel(func, self.target).export_library(
                    str(library), fcompile=export_compiler(self.target)
                )
                jobs.append(
                    RemoteJob(
                        key,
                        str(library),
                        kernel_arguments(func),
                        repeat=sampling.repeat,
                        min_repeat_ms=sampling.min_repeat_ms,
                        function="main",
                        f_preproc=sampling.f_preproc,
                    )
                )
            for _ in range(self.rounds):
                results = self.devices.measure_all(jobs)
                for key in kernels:
                    best[key] = min(best[key], _minimum(key, *results[key]))
        return best

    def time_models(
        self, models: Mapping[str, CompiledModel], inputs: list, rounds: int = 10
    ) -> Dict[str, float]:
        """``{label: minimum ms}`` of whole models, one job per model and round, alternating."""
        best = {label: float("inf") for label in models}
        with tempfile.TemporaryDirectory(prefix="structconv-plan-") as folder:
            libraries = {}
            for label, model in models.items():
                libraries[label] = str(Path(folder) / f"model_{label}.so")
                model.export(libraries[label])
            for _ in range(rounds):
                for label, library in libraries.items():
                    job = RemoteJob(
                        label, library, inputs, repeat=1, min_repeat_ms=5 * self.min_repeat_ms
                    )
                    best[label] = min(best[label], _minimum(label, *self.devices.measure(job)))
        return best


def _minimum(label: str, latency, reason: str) -> float:
    """The smallest sample of a remote measurement, or :class:`RemoteError` with its reason."""
    if latency is None:
        raise RemoteError(f"measuring {label} through RPC failed: {reason}")
    return min(latency.samples_ms)
