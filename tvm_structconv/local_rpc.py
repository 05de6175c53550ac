"""A TVM RPC tracker and servers started on this machine, for tests and benchmarks.

:func:`local_rpc_cluster` starts ``python -m tvm.exec.rpc_tracker`` and ``count`` servers
(``python -m tvm.exec.rpc_server``) on ``127.0.0.1``, waits until every server has registered
under the key, and kills them all when its ``with`` block ends. The servers run on this CPU, so
what they measure is this machine through the whole RPC path (export, upload, remote timing):
how :mod:`tvm_structconv.remote` and everything built on it (``structconv bench``/``tune``/
``plan --rpc-tracker``) is checked without a board.

    with local_rpc_cluster("cpu", count=2) as cluster:
        RemoteDevices(cluster.address, cluster.key).servers()  # 2

A real device runs its server itself (README, "Deploying to ARM"); this module is not for that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Iterator, List, Optional, Sequence

from tvm_structconv.remote import RemoteDevices, RemoteError

__all__ = ["LocalRPCCluster", "LocalRPCError", "free_port", "local_rpc_cluster"]

HOST = "127.0.0.1"
#: Ports a server may try from the free one it is given (another process may take that one
#: between the probe and the server's bind).
SERVER_PORTS = 10


class LocalRPCError(RemoteError):
    """The local tracker or a server did not start: a busy port, a process that exited, or
    servers that did not register in time."""


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on at ``host`` right now (the system's choice).

    Parameters
    ----------
    host
        The address to probe.

    Returns
    -------
    int
        The port; another process may still take it before it is used.
    """
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _check_free(host: str, port: int) -> None:
    """Raise :class:`LocalRPCError` if ``port`` cannot be bound at ``host``."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise LocalRPCError(
                f"port {port} on {host} is busy ({error.strerror}): the RPC tracker cannot listen "
                "there; pick another port or leave it to the system (port=None)"
            ) from None


@dataclass
class _Process:
    """A started tracker or server: its process (a session of its own) and its stderr."""

    name: str
    popen: subprocess.Popen
    stderr: IO[bytes]

    def exited(self) -> Optional[str]:
        """``None`` while it runs, else its exit status and the last line it wrote."""
        if self.popen.poll() is None:
            return None
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        last = f": {lines[-1]}" if lines else ""
        return f"the {self.name} exited with status {self.popen.returncode}{last}"

    def kill(self) -> None:
        """Kill it and the workers it started; close its stderr."""
        _kill(self.popen)
        self.stderr.close()


def _kill(popen: subprocess.Popen) -> None:
    """Kill ``popen`` and every process it started (its session: tracker or session workers)."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)


def _start(name: str, module: str, arguments: Sequence[str]) -> _Process:
    stderr = tempfile.TemporaryFile(prefix="structconv-rpc-")
    popen = subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,  # killpg reaches the workers it forks
    )
    return _Process(name, popen, stderr)


@dataclass
class LocalRPCCluster:
    """A running local tracker and its servers (yielded by :func:`local_rpc_cluster`).

    Attributes
    ----------
    key
        The key every server registered under.
    port
        The tracker's port on ``127.0.0.1``.
    tracker
        The tracker's process.
    servers
        The servers' processes, in start order (:meth:`kill_server` stops one).
    """

    key: str
    port: int
    tracker: subprocess.Popen
    servers: List[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``: what ``--rpc-tracker`` and :class:`RemoteDevices` take."""
        return f"{HOST}:{self.port}"

    def devices(self, session_timeout: int = 60, request_timeout: float = 30.0) -> RemoteDevices:
        """The servers of the key, as :class:`~tvm_structconv.remote.RemoteDevices`.

        Parameters
        ----------
        session_timeout, request_timeout
            As for :class:`~tvm_structconv.remote.RemoteDevices`.

        Returns
        -------
        RemoteDevices
            The devices behind this tracker under this key.
        """
        return RemoteDevices(self.address, self.key, session_timeout, request_timeout)

    def alive_servers(self) -> List[subprocess.Popen]:
        """The servers still running."""
        return [server for server in self.servers if server.poll() is None]

    def kill_server(self, index: int) -> None:
        """Kill server ``index`` (and its session workers) now, as a lost device.

        Parameters
        ----------
        index
            Its position in :attr:`servers`.
        """
        _kill(self.servers[index])


def _wait_listening(tracker: _Process, port: int, deadline: float) -> None:
    """Until ``tracker`` accepts connections on ``port`` (servers retry only every 5 s, so
    they start once it listens)."""
    while True:
        reason = tracker.exited()
        if reason is not None:
            raise LocalRPCError(f"the RPC tracker on {HOST}:{port} did not start: {reason}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise LocalRPCError(
                    f"the RPC tracker did not listen on {HOST}:{port} in time"
                ) from None
            time.sleep(0.2)


def _wait_registered(
    devices: RemoteDevices, servers: Sequence[_Process], count: int, timeout: float, start: float
) -> None:
    """Until ``count`` servers are registered under the key, or :class:`LocalRPCError`."""
    registered, last = 0, ""
    while True:
        try:
            registered = devices.servers()
            if registered >= count:
                return
        except RemoteError as error:
            last = str(error)
        gone = [reason for reason in (s.exited() for s in servers) if reason is not None]
        if gone or time.monotonic() - start > timeout:
            because = "; ".join(gone) if gone else last or f"{registered} had registered"
            raise LocalRPCError(
                f"{count} RPC server(s) under key {devices.key!r} did not register with the "
                f"tracker at {devices.address} within {timeout:g} s: {because}"
            )
        time.sleep(0.5)


def _tracker_command(port: int) -> List[str]:
    return ["--host", HOST, "--port", str(port), "--port-end", str(port + 1), "--silent"]


def _server_command(address: str, key: str, port: int) -> List[str]:
    return [
        "--tracker",
        address,
        "--key",
        key,
        "--host",
        HOST,
        "--port",
        str(port),
        "--port-end",
        str(port + SERVER_PORTS),
        "--silent",
    ]


@contextlib.contextmanager
def local_rpc_cluster(
    key: str, count: int = 1, port: Optional[int] = None, timeout: float = 60.0
) -> Iterator[LocalRPCCluster]:
    """A TVM RPC tracker and ``count`` servers under ``key`` on ``127.0.0.1``, while in use.

    Every process is killed (with the workers it started) when the ``with`` block ends, also on
    an error; a process killed earlier (:meth:`LocalRPCCluster.kill_server`) is left as it is.

    Parameters
    ----------
    key
        The device key the servers register under.
    count
        How many servers (each one measures one job at a time).
    port
        The tracker's port; ``None`` takes a free one.
    timeout
        Seconds the tracker has to listen and the servers to register, together.

    Yields
    ------
    LocalRPCCluster
        The tracker's address, the key and the processes.

    Raises
    ------
    LocalRPCError
        If ``port`` is busy, the tracker or a server exits while starting, or not all servers
        register within ``timeout``.
    ValueError
        If ``count`` is below 1 or ``key`` is empty.
    """
    if count < 1 or not key:
        raise ValueError(f"a local RPC cluster needs a key and 1 server or more: {key!r}, {count}")
    start = time.monotonic()
    port = free_port() if port is None else port
    _check_free(HOST, port)
    processes = [_start("RPC tracker", "tvm.exec.rpc_tracker", _tracker_command(port))]
    try:
        _wait_listening(processes[0], port, start + timeout)
        address = f"{HOST}:{port}"
        for index in range(count):
            processes.append(
                _start(
                    f"RPC server {index}",
                    "tvm.exec.rpc_server",
                    _server_command(address, key, free_port()),
                )
            )
        devices = RemoteDevices(address, key, session_timeout=60, request_timeout=30)
        _wait_registered(devices, processes[1:], count, timeout, start)
        yield LocalRPCCluster(key, port, processes[0].popen, [p.popen for p in processes[1:]])
    finally:
        for process in reversed(processes):
            process.kill()
