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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tvm_structconv.threads import thread_environment

__all__ = ["Job", "Latency", "measure_isolated", "measure_latency", "run_job", "time_callable"]


@dataclass(frozen=True)
class Latency:
    """Latency samples of one model in milliseconds (one per timed repeat)."""

    samples_ms: Tuple[float, ...]

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
        """Both sets of samples together (for interleaved rounds)."""
        return Latency(tuple(self.samples_ms) + tuple(other.samples_ms))


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

    def inputs(self) -> List[np.ndarray]:
        """The inputs, loaded from ``inputs_path``."""
        with np.load(self.inputs_path) as data:
            return [data[key] for key in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def save_inputs(path: str, inputs: Sequence[np.ndarray]) -> str:
    """Write ``inputs`` where :meth:`Job.inputs` reads them; return ``path``."""
    np.savez(path, **{f"input_{index}": array for index, array in enumerate(inputs)})
    return path


def _torch_module(job: Job):
    from tvm_structconv.peers import PeerUnavailable

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
    if job.variant == "structured":
        raise PeerUnavailable("torch runs the structured variant only for built-in models")
    if job.pt2 is None:
        raise PeerUnavailable("torch needs a torch.export program (.pt2)")
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

    inputs = job.inputs()
    if job.runtime == "tvm":
        import tvm
        from tvm import relax

        device = tvm.cpu()
        vm = relax.VirtualMachine(tvm.runtime.load_module(job.library), device)
        return _time_vm(vm, device, inputs, job.repeat, job.min_repeat_ms, warmup=1)
    if job.runtime == "onnxruntime":
        if job.onnx is None:
            raise PeerUnavailable("onnxruntime needs an ONNX model")
        run = onnxruntime_runner(job.onnx, inputs, job.threads, job.variant == "structured")
    elif job.runtime in ("torch", "inductor"):
        run = torch_runner(_torch_module(job), inputs, job.threads, job.runtime == "inductor")
    else:
        raise PeerUnavailable(f"unknown runtime {job.runtime!r}")
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
