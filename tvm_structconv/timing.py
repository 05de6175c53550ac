"""Latency measurement: TVM builds and peer runtimes, each timed in a process of its own.

A runtime's worker threads keep spinning after a call and slow the next runtime measured in the
same process (onnxruntime's idle threads slowed TVM measured after it), so
:func:`measure_isolated` runs every measurement in a fresh ``python -m tvm_structconv.timing``
worker with its thread count pinned (:func:`~tvm_structconv.threads.thread_environment`).
Timing follows ``time_evaluator``: warm-up, then ``repeat`` samples, each the mean over as many
runs as make up ``min_repeat_ms``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from tvm_structconv.threads import thread_environment

__all__ = [
    "Job",
    "Latency",
    "interleaved_samples",
    "measure_isolated",
    "measure_latency",
    "run_job",
    "time_callable",
]


#: Rounds whose medians differ by more than this fraction make a measurement unstable.
ROUND_SPREAD = 0.25
#: Sorted samples with a jump by more than this factor between two neighbours, and at least a
#: fifth of them on each side, are bimodal.
BIMODAL_GAP = 1.5


@dataclass(frozen=True)
class Latency:
    """Latency samples of one model in milliseconds (one per timed repeat).

    Attributes
    ----------
    samples_ms
        Every sample, round after round.
    rounds
        Samples per round, in order (empty: all samples are one round).
    """

    samples_ms: Tuple[float, ...]
    rounds: Tuple[int, ...] = ()

    @property
    def median_ms(self) -> float:
        """Median over the repeats."""
        return float(np.median(self.samples_ms))

    @property
    def p90_ms(self) -> float:
        """90th percentile over the repeats."""
        return float(np.percentile(self.samples_ms, 90))

    @property
    def p99_ms(self) -> float:
        """99th percentile over the repeats."""
        return float(np.percentile(self.samples_ms, 99))

    def merged(self, other: Latency) -> Latency:
        """Both sets of samples together (for interleaved rounds), each keeping its rounds."""
        return Latency(
            tuple(self.samples_ms) + tuple(other.samples_ms),
            self._round_sizes() + other._round_sizes(),
        )

    def _round_sizes(self) -> Tuple[int, ...]:
        return self.rounds or (len(self.samples_ms),)

    def round_medians_ms(self) -> List[float]:
        """The median of each round."""
        medians, start = [], 0
        for size in self._round_sizes():
            medians.append(float(np.median(self.samples_ms[start : start + size])))
            start += size
        return medians

    def instability(self) -> Optional[str]:
        """Why these samples cannot be trusted for a ratio, or ``None`` when they can.

        Unstable: rounds whose medians differ by more than :data:`ROUND_SPREAD` (another
        process took the cores for a round), or samples in two clusters (a jump by more than
        :data:`BIMODAL_GAP` between sorted neighbours, a fifth of the samples or more on each
        side).
        """
        medians = self.round_medians_ms()
        low, high = min(medians), max(medians)
        if len(medians) > 1 and high > (1 + ROUND_SPREAD) * low:
            rounds = ", ".join(f"{median:.3g}" for median in medians)
            return f"round medians {rounds} ms differ by {100 * (high / low - 1):.0f} %"
        ordered = np.sort(np.asarray(self.samples_ms, dtype=np.float64))
        if len(ordered) < 4 or ordered[0] <= 0:
            return None
        jumps = ordered[1:] / ordered[:-1]
        split = int(np.argmax(jumps)) + 1  # samples below the largest jump
        side = min(split, len(ordered) - split)
        if jumps[split - 1] > BIMODAL_GAP and side >= max(2, len(ordered) / 5):
            return (
                f"bimodal: {split} samples <= {ordered[split - 1]:.3g} ms, "
                f"{len(ordered) - split} >= {ordered[split]:.3g} ms"
            )
        return None


def time_callable(
    run: Callable[[], object], repeat: int = 10, min_repeat_ms: int = 100, warmup: int = 1
) -> Latency:
    """Time ``run()`` like ``time_evaluator``: each sample is the mean of enough calls to last
    ``min_repeat_ms`` (the count is fixed from the first calls), ``repeat`` samples."""
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        run()
        single = time.perf_counter() - start
    number = max(1, int(np.ceil(min_repeat_ms / 1e3 / max(single, 1e-9))))
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        samples.append((time.perf_counter() - start) / number * 1e3)
    return Latency(tuple(samples))


def interleaved_samples(
    functions: Mapping[str, Callable[[], object]], calls: int, warmup: int = 2
) -> Dict[str, List[float]]:
    """Milliseconds of every call of each function, the functions called in turn, round by round.

    ``warmup`` untimed rounds first, then ``calls`` timed ones. Calling them alternately makes a
    drift in the machine's load hit every function alike; on a shared machine the minimum of a
    function's samples is its call least slowed by other jobs. Only for functions that may share
    a process: runtimes whose idle threads spin (onnxruntime at several threads) are timed apart
    (:func:`measure_isolated`).
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    samples: Dict[str, List[float]] = {name: [] for name in functions}
    for _ in range(calls):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def measure_latency(
    compiled,
    inputs: Sequence[np.ndarray],
    repeat: int = 10,
    min_repeat_ms: int = 100,
    warmup: int = 1,
) -> Latency:
    """Time ``main`` of a :class:`~tvm_structconv.build.CompiledModel` in this process."""
    return _time_vm(compiled.load(), compiled.device(), inputs, repeat, min_repeat_ms, warmup)


def _time_vm(
    vm, device, inputs: Sequence[np.ndarray], repeat: int, min_repeat_ms: int, warmup: int
) -> Latency:
    import tvm

    arguments = [tvm.runtime.tensor(array, device) for array in inputs]
    for _ in range(warmup):
        vm["main"](*arguments)
    timer = vm.time_evaluator(
        "main", device, number=1, repeat=repeat, min_repeat_ms=int(min_repeat_ms)
    )
    return Latency(tuple(float(seconds) * 1e3 for seconds in timer(*arguments).results))


@dataclass
class Job:
    """One latency measurement, serializable so a worker process can run it.

    Attributes
    ----------
    runtime
        ``"tvm"``, ``"onnxruntime"``, ``"torch"`` or ``"inductor"``.
    variant
        ``"original"`` or ``"structured"``.
    inputs_path
        ``.npz`` file with the inputs, in order.
    library
        The exported TVM library (``tvm`` jobs).
    onnx
        ONNX file (``onnxruntime`` jobs).
    pt2
        ``torch.export`` program (``torch`` / ``inductor`` jobs on the original model).
    builtin
        ``{"name", "plan", "image_size", "seed"}`` of a built-in model (``torch`` / ``inductor``
        jobs, the only way they run the structured variant).
    """

    runtime: str
    variant: str
    inputs_path: str
    threads: int = 1
    repeat: int = 10
    min_repeat_ms: int = 100
    library: Optional[str] = None
    onnx: Optional[str] = None
    pt2: Optional[str] = None
    builtin: Optional[Dict[str, object]] = None
    extra: Dict[str, object] = field(default_factory=dict)

    def unavailable(self) -> Optional[str]:
        """Why this runtime cannot run this model at all (``None`` when it may): known before
        any worker starts, so such a row is listed once and never run."""
        if self.runtime == "tvm":
            return None if self.library else "no TVM library"
        if self.runtime == "onnxruntime":
            return None if self.onnx else "onnxruntime needs an ONNX model"
        if self.runtime not in ("torch", "inductor"):
            return f"unknown runtime {self.runtime!r}"
        if self.builtin is not None:
            return None
        if self.variant == "structured":
            return "torch runs the structured variant only for built-in models"
        return None if self.pt2 else "torch needs a torch.export program (.pt2)"

    def inputs(self) -> List[np.ndarray]:
        """The inputs, loaded from ``inputs_path``."""
        with np.load(self.inputs_path) as data:
            return [data[key] for key in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def save_inputs(path: str, inputs: Sequence[np.ndarray]) -> str:
    """Write ``inputs`` where :meth:`Job.inputs` reads them; return ``path``."""
    np.savez(path, **{f"input_{index}": array for index, array in enumerate(inputs)})
    return path


def _torch_module(job: Job):
    if job.builtin is not None:
        from tvm_structconv.models import create_structured
        from tvm_structconv.nn import structurize
        from tvm_structconv.plan import Plan

        built = create_structured(**job.builtin)
        if job.variant == "original":
            return built.model
        layers = {
            name[: -len(".weight")]: (s.reduced_channels, s.reduced_kernel_size)
            for name, s in built.structures.items()
        }
        return structurize(built.model, Plan(layers=layers), replace=True)[0]
    import torch

    return torch.export.load(job.pt2).module()


def run_job(job: Job) -> Latency:
    """Run ``job`` in this process.

    Raises
    ------
    tvm_structconv.peers.PeerUnavailable
        If the runtime cannot run this model; the message says why.
    """
    from tvm_structconv.peers import PeerUnavailable, onnxruntime_runner, torch_runner

    reason = job.unavailable()
    if reason is not None:
        raise PeerUnavailable(reason)
    inputs = job.inputs()
    if job.runtime == "tvm":
        import tvm
        from tvm import relax

        device = tvm.cpu()
        vm = relax.VirtualMachine(tvm.runtime.load_module(job.library), device)
        return _time_vm(vm, device, inputs, job.repeat, job.min_repeat_ms, warmup=1)
    if job.runtime == "onnxruntime":
        run = onnxruntime_runner(job.onnx, inputs, job.threads, job.variant == "structured")
    else:
        run = torch_runner(_torch_module(job), inputs, job.threads, job.runtime == "inductor")
    return time_callable(
        run, job.repeat, job.min_repeat_ms, warmup=3 if job.runtime == "inductor" else 1
    )


def measure_isolated(job: Job, timeout_s: float = 900.0) -> Tuple[Optional[Latency], str]:
    """Run ``job`` in a fresh worker process; return its latency or ``(None, reason)``."""
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "tvm_structconv.timing"],
            input=json.dumps(asdict(job)),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=thread_environment(job.threads),
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s"
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"worker failed: {tail}"
    result = json.loads(lines[-1])
    if "error" in result:
        return None, result["error"]
    return Latency(tuple(result["samples_ms"])), ""


def _worker() -> int:
    """Read a :class:`Job` as JSON on stdin; print ``{"samples_ms": [...]}`` or ``{"error": …}``."""
    from tvm_structconv.peers import PeerUnavailable

    job = Job(**json.loads(sys.stdin.read()))
    try:
        latency = run_job(job)
    except PeerUnavailable as reason:
        print(json.dumps({"error": str(reason)}))
        return 0
    print(json.dumps({"samples_ms": list(latency.samples_ms)}))
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
