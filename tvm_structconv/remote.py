"""Measure compiled models on remote devices through TVM RPC (a tracker and its servers).

Each device runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``; the tracker
hands a free server of a key to each request, so jobs sent in parallel spread over all servers
registered under the key. A server that dies mid-run costs only its job: it is retried once on
another server, then reported as failed, and the run goes on.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from tvm_structconv.timing import Latency

__all__ = ["RemoteError", "RemoteDevices", "parse_tracker"]


class RemoteError(Exception):
    """The tracker cannot be reached or has no server for the key."""


def parse_tracker(address: str) -> Tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RemoteError(f"RPC tracker address must be HOST:PORT, got {address!r}")
    return host, int(port)


@dataclass(frozen=True)
class RemoteJob:
    """One library to time on a device of the key.

    ``function``: ``None`` for a Relax VM executable (its ``main`` is timed), or the name of a
    function the library exports (a single kernel: its arguments are ``inputs``, outputs too).
    ``f_preproc``: ``time_evaluator``'s preprocessor run before each sample
    (``cache_flush_cpu_non_first_arg`` times a kernel with cold weights).
    """

    label: str
    library: str
    inputs: Sequence[np.ndarray]
    repeat: int = 10
    min_repeat_ms: int = 100
    function: Optional[str] = None
    f_preproc: str = ""


class RemoteDevices:
    """The servers registered under ``key`` at the tracker ``address``.

    Parameters
    ----------
    address
        ``HOST:PORT`` of the tracker.
    key
        The device key the servers registered with.
    session_timeout
        Seconds a session may last before the server drops it (a hung device frees itself).
    request_timeout
        Seconds to wait for a free server before giving up on a job.
    """

    def __init__(
        self, address: str, key: str, session_timeout: int = 600, request_timeout: float = 120.0
    ) -> None:
        self.host, self.port = parse_tracker(address)
        self.address, self.key = address, key
        self.session_timeout = session_timeout
        self.request_timeout = request_timeout

    def _tracker(self):
        from tvm import rpc

        try:
            # TVM retries an unreachable tracker for a minute; a plain connect fails at once
            socket.create_connection((self.host, self.port), timeout=10).close()
            return rpc.connect_tracker(self.host, self.port)
        except Exception as error:  # tvm raises RuntimeError/OSError/TVMError variously
            raise RemoteError(f"cannot reach the RPC tracker at {self.address}: {error}") from None

    def servers(self) -> int:
        """How many servers are registered under the key.

        Raises
        ------
        RemoteError
            If the tracker is unreachable or no server has the key.
        """
        summary = self._tracker().summary()
        count = sum(
            1
            for server in summary.get("server_info", [])
            if str(server.get("key", "")).split(":", 1)[-1] == self.key
        )
        if count == 0:
            raise RemoteError(
                f"no RPC server is registered under key {self.key!r} at {self.address}; start one "
                "on the device: python -m tvm.exec.rpc_server "
                f"--tracker {self.address} --key {self.key}"
            )
        return count

    def _measure_once(self, job: RemoteJob) -> Latency:
        from tvm import relax

        tracker = self._tracker()
        session = tracker.request(
            self.key,
            priority=1,
            session_timeout=self.session_timeout,
            max_retry=max(1, int(self.request_timeout // 5)),
        )
        session.upload(job.library)
        library = session.load_module(os.path.basename(job.library))
        device = session.cpu()
        import tvm

        arguments = [tvm.runtime.tensor(array, device) for array in job.inputs]
        if job.function is None:
            runner = relax.VirtualMachine(library, device)
            name = "main"
        else:
            runner, name = library, job.function
        runner[name](*arguments)
        timer = runner.time_evaluator(
            name,
            device,
            number=1,
            repeat=job.repeat,
            min_repeat_ms=job.min_repeat_ms,
            f_preproc=job.f_preproc,
        )
        return Latency(tuple(float(s) * 1e3 for s in timer(*arguments).results))

    def measure(self, job: RemoteJob, retries: int = 1) -> Tuple[Optional[Latency], str]:
        """Time ``job`` on some server of the key; ``(None, reason)`` if every try failed."""
        reason = ""
        for _attempt in range(retries + 1):
            try:
                return self._measure_once(job), ""
            except RemoteError as error:
                return None, str(error)
            except Exception as error:  # a lost server surfaces as TVMError/RuntimeError/OSError
                first_line = str(error).splitlines()[0][:160]
                reason = f"server lost or failed ({type(error).__name__}: {first_line})"
        return None, reason + (f"; retried {retries}x" if retries else "")

    def measure_all(self, jobs: Sequence[RemoteJob]) -> Dict[str, Tuple[Optional[Latency], str]]:
        """Time all ``jobs`` in parallel, one per free server; ``{label: (latency, reason)}``."""
        workers = self.servers()
        results: Dict[str, Tuple[Optional[Latency], str]] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(self.measure, job): job.label for job in jobs}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
        return results
