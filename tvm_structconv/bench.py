"""Latency measurement of compiled models, ``time_evaluator`` style.

Warm-up, then ``repeat`` timed repeats, each long enough (``min_repeat_ms``) to average out
timer noise; the summary keeps every sample so reports can show median, p90 and p99.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import tvm

from tvm_structconv.build import CompiledModel

__all__ = ["Latency", "measure_latency"]


@dataclass(frozen=True)
class Latency:
    """Latency samples of one model in milliseconds (one per timed repeat)."""

    samples_ms: tuple

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

    def merged(self, other: "Latency") -> "Latency":
        """Both sets of samples together (for interleaved rounds)."""
        return Latency(self.samples_ms + other.samples_ms)


def measure_latency(
    compiled: CompiledModel,
    inputs: Sequence[np.ndarray],
    repeat: int = 10,
    min_repeat_ms: int = 100,
    warmup: int = 1,
) -> Latency:
    """Time ``main`` of ``compiled`` on ``inputs``.

    Parameters
    ----------
    compiled
        The model.
    inputs
        One numpy array per model input.
    repeat
        Timed repeats; each gives one sample.
    min_repeat_ms
        Each repeat runs ``main`` as often as needed to last at least this long and reports the
        mean of those runs.
    warmup
        Untimed runs first (first-run allocation and page faults).
    """
    device = compiled.device()
    vm = compiled.load()
    arguments: List[tvm.runtime.Tensor] = [tvm.runtime.tensor(a, device) for a in inputs]
    for _ in range(warmup):
        vm["main"](*arguments)
    timer = vm.time_evaluator("main", device, number=1, repeat=repeat,
                              min_repeat_ms=int(min_repeat_ms))
    result = timer(*arguments)
    return Latency(tuple(float(seconds) * 1e3 for seconds in result.results))
