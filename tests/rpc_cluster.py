"""A real TVM RPC tracker and servers on 127.0.0.1 for tests (killed afterwards)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, List, Tuple

from tvm_structconv.remote import RemoteDevices, RemoteError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(arguments) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for_servers(devices: RemoteDevices, count: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if devices.servers() >= count:
                return
        except RemoteError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{count} RPC servers did not register within {timeout} s")


@contextlib.contextmanager
def rpc_cluster(
    key: str, count: int
) -> Iterator[Tuple[int, subprocess.Popen, List[subprocess.Popen]]]:
    """A tracker and ``count`` servers under ``key``: yields (tracker port, tracker, servers)."""
    port = free_port()
    tracker = start(
        [
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--port-end",
            str(port + 1),
            "--silent",
        ]
    )
    servers: List[subprocess.Popen] = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # servers retry only every 5 s: start them once it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for _ in range(count):
            server_port = free_port()
            servers.append(
                start(
                    [
                        "tvm.exec.rpc_server",
                        "--tracker",
                        f"127.0.0.1:{port}",
                        "--key",
                        key,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(server_port),
                        "--port-end",
                        str(server_port + 1),
                    ]
                )
            )
        devices = RemoteDevices(f"127.0.0.1:{port}", key, session_timeout=60, request_timeout=30)
        wait_for_servers(devices, count)
        yield port, tracker, servers
    finally:
        for process in [*servers, tracker]:
            stop(process)
