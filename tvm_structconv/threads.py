"""How many threads the runtimes use, set in one place.

TVM's thread pool reads ``TVM_NUM_THREADS`` once, when it starts (at the process's first
parallel run), and its default is the physical cores (1 on a 2-vCPU SMT machine), not the
cores this process may use; OpenMP (torch) and MKL read ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` likewise. :func:`pinned_threads` sets them for a block of this process;
:func:`thread_environment` is a worker process's environment with them set.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Dict, Iterator, Mapping, Optional, Sequence

__all__ = [
    "ALL_THREAD_VARIABLES",
    "TVM_THREADS",
    "available_cores",
    "pinned_threads",
    "thread_environment",
]

#: TVM's thread-count variable.
TVM_THREADS = "TVM_NUM_THREADS"
#: Every runtime's thread-count variable: TVM, OpenMP (torch, onnxruntime builds), MKL.
ALL_THREAD_VARIABLES = (TVM_THREADS, "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_environment(
    threads: int,
    variables: Sequence[str] = ALL_THREAD_VARIABLES,
    base: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """``base`` (default: this process's environment) with every one of ``variables`` set to
    ``threads``: the environment of a worker process whose runtimes use that many threads."""
    environment = dict(os.environ if base is None else base)
    environment.update({variable: str(threads) for variable in variables})
    return environment


@contextmanager
def pinned_threads(
    threads: Optional[int] = None, variables: Sequence[str] = (TVM_THREADS,)
) -> Iterator[int]:
    """Set ``variables`` (default: ``TVM_NUM_THREADS`` only) to ``threads`` in this process for
    the block; restore them on exit.

    Parameters
    ----------
    threads
        The thread count. ``None``: a ``TVM_NUM_THREADS`` the user set stays, else every core
        this process may use (:func:`available_cores`).
    variables
        The variables to set.

    Yields
    ------
    int
        The thread count in effect.

    Notes
    -----
    TVM's thread pool takes its size when it starts, so the block must hold the process's first
    parallel TVM run for the count to apply.
    """
    if threads is None:
        current = os.environ.get(TVM_THREADS, "")
        threads = int(current) if current.isdigit() and int(current) > 0 else available_cores()
    saved = {variable: os.environ.get(variable) for variable in variables}
    os.environ.update(thread_environment(threads, variables, base={}))
    try:
        yield threads
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
