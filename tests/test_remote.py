"""TVM RPC measurement with a real tracker and real servers on 127.0.0.1."""

import threading
import time

import numpy as np
import pytest
import tvm
from tvm.script import relax as R

from tvm_structconv.local_rpc import local_rpc_cluster
from tvm_structconv.remote import RemoteDevices, RemoteError, RemoteJob
from tvm_structconv.timing import Latency


@pytest.fixture(scope="module")
def cluster():
    """A tracker and two servers under key 'cpu'; everything is killed afterwards."""
    with local_rpc_cluster("cpu", 2) as running:
        yield running


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
    devices = cluster.devices(session_timeout=60, request_timeout=30)
    assert devices.servers() == 2
    x = np.ones((256, 256), "float32")
    results = devices.measure_all(
        [RemoteJob(f"job{i}", library, [x], repeat=3, min_repeat_ms=20) for i in range(4)]
    )
    assert sorted(results) == ["job0", "job1", "job2", "job3"]
    for latency, reason in results.values():
        assert reason == "" and isinstance(latency, Latency) and len(latency.samples_ms) == 3
        assert 0 < latency.median_ms < 1000


def test_bad_tracker_and_missing_key_are_clear_errors(cluster):
    with pytest.raises(RemoteError, match="no RPC server is registered under key 'gpu'"):
        RemoteDevices(cluster.address, "gpu").servers()
    with pytest.raises(RemoteError, match="cannot reach the RPC tracker at 127.0.0.1:1"):
        RemoteDevices("127.0.0.1:1", "cpu").servers()
    with pytest.raises(RemoteError, match="must be HOST:PORT"):
        RemoteDevices("nonsense", "cpu")


def test_a_server_killed_mid_run_costs_only_its_job(cluster, library):
    """Kill one of the two servers while jobs run: the run ends, every job is accounted for."""
    servers = cluster.servers
    devices = cluster.devices(session_timeout=60, request_timeout=20)
    x = np.ones((256, 256), "float32")
    jobs = [RemoteJob(f"job{i}", library, [x], repeat=4, min_repeat_ms=250) for i in range(6)]
    killer = threading.Timer(1.5, cluster.kill_server, args=(0,))
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
    from tvm_structconv.benchmark import run_benchmark

    from small_nets import export_net

    assert cluster.alive_servers(), "the fixture's servers are gone"
    report = run_benchmark(
        str(export_net(tmp_path)),
        peers=[],
        repeat=2,
        min_repeat_ms=5,
        rounds=1,
        rpc_tracker=cluster.address,
        device_key="cpu",
        workdir=str(tmp_path / "work"),
    )
    for variant in ("original", "structured"):
        row = report.row("x86", "tvm", variant)
        assert row.latency is not None and len(row.latency.samples_ms) == 2, row.note
