"""TVM RPC measurement with a real tracker and real servers on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tvm
from tvm.script import relax as R

from tvm_structconv.bench import Latency
from tvm_structconv.remote import RemoteDevices, RemoteError, RemoteJob


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(arguments) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *arguments], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


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


@pytest.fixture(scope="module")
def cluster():
    """A tracker and two servers under key 'cpu'; everything is killed afterwards."""
    port = free_port()
    tracker = start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                     "--port-end", str(port + 1), "--silent"])
    servers = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # servers retry only every 5 s: start them once it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for _ in range(2):
            server_port = free_port()
            servers.append(start(["tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                                  "--key", "cpu", "--host", "127.0.0.1", "--port",
                                  str(server_port), "--port-end", str(server_port + 1)]))
        devices = RemoteDevices(f"127.0.0.1:{port}", "cpu", session_timeout=60,
                                request_timeout=30)
        wait_for_servers(devices, 2)
        yield port, tracker, servers
    finally:
        for process in [*servers, tracker]:
            stop(process)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((256, 256), "float32")):
            return R.matmul(x, x)

    path = str(tmp_path_factory.mktemp("lib") / "matmul.so")
    tvm.compile(Module, target="llvm").export_library(path)
    return path


def test_remote_measurement_runs_on_the_servers(cluster, library):
    port, _, _ = cluster
    devices = RemoteDevices(f"127.0.0.1:{port}", "cpu", session_timeout=60, request_timeout=30)
    assert devices.servers() == 2
    x = np.ones((256, 256), "float32")
    results = devices.measure_all([RemoteJob(f"job{i}", library, [x], repeat=3, min_repeat_ms=20)
                                   for i in range(4)])
    assert sorted(results) == ["job0", "job1", "job2", "job3"]
    for latency, reason in results.values():
        assert reason == "" and isinstance(latency, Latency) and len(latency.samples_ms) == 3
        assert 0 < latency.median_ms < 1000


def test_bad_tracker_and_missing_key_are_clear_errors(cluster):
    port, _, _ = cluster
    with pytest.raises(RemoteError, match="no RPC server is registered under key 'gpu'"):
        RemoteDevices(f"127.0.0.1:{port}", "gpu").servers()
    with pytest.raises(RemoteError, match="cannot reach the RPC tracker at 127.0.0.1:1"):
        RemoteDevices("127.0.0.1:1", "cpu").servers()
    with pytest.raises(RemoteError, match="must be HOST:PORT"):
        RemoteDevices("nonsense", "cpu")


def test_a_server_killed_mid_run_costs_only_its_job(cluster, library):
    """Kill one of the two servers while jobs run: the run ends, every job is accounted for."""
    port, _, servers = cluster
    devices = RemoteDevices(f"127.0.0.1:{port}", "cpu", session_timeout=60, request_timeout=20)
    x = np.ones((256, 256), "float32")
    jobs = [RemoteJob(f"job{i}", library, [x], repeat=4, min_repeat_ms=250) for i in range(6)]
    killer = threading.Timer(1.5, stop, args=(servers[0],))
    killer.start()
    start_time = time.time()
    results = devices.measure_all(jobs)
    killer.join()
    assert time.time() - start_time < 120  # no hang
    assert servers[0].poll() is not None  # it really died
    assert sorted(results) == sorted(job.label for job in jobs)  # no lost results
    measured = [latency for latency, _ in results.values() if latency is not None]
    failed = [reason for latency, reason in results.values() if latency is None]
    assert measured, results  # the surviving server measured jobs
    assert all("server lost or failed" in reason for reason in failed), failed


def test_bench_sends_tvm_builds_to_the_devices(cluster, tmp_path):
    from small_nets import export_net
    from tvm_structconv.benchmark import run_benchmark

    port, _, servers = cluster
    alive = [server for server in servers if server.poll() is None]
    assert alive, "the fixture's servers are gone"
    report = run_benchmark(str(export_net(tmp_path)), peers=[], repeat=2, min_repeat_ms=5,
                           rounds=1, rpc_tracker=f"127.0.0.1:{port}", device_key="cpu",
                           workdir=str(tmp_path / "work"))
    for variant in ("original", "structured"):
        row = report.row("x86", "tvm", variant)
        assert row.latency is not None and len(row.latency.samples_ms) == 2, row.note
