"""The local RPC cluster's errors: a busy port, a tracker or server that exits, servers that do
not register in time (the cluster itself runs in tests/test_remote.py's fixture)."""

import socket
import time

import pytest

from tvm_structconv import local_rpc
from tvm_structconv.local_rpc import LocalRPCError, free_port, local_rpc_cluster
from tvm_structconv.remote import RemoteError


def test_a_busy_port_is_refused_before_anything_starts(monkeypatch):
    started = []
    monkeypatch.setattr(local_rpc, "_start", lambda *arguments: started.append(arguments))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LocalRPCError, match=f"port {port} on 127.0.0.1 is busy"):
            with local_rpc_cluster("cpu", 1, port=port):
                pass
    assert not started
    assert issubclass(LocalRPCError, RemoteError)  # callers that catch RemoteError catch it


@pytest.mark.parametrize("key, count", [("", 1), ("cpu", 0)])
def test_a_cluster_needs_a_key_and_a_server(key, count):
    with pytest.raises(ValueError, match="a key and 1 server or more"):
        with local_rpc_cluster(key, count):
            pass


def test_a_tracker_that_does_not_listen_in_time_is_killed():
    with pytest.raises(LocalRPCError, match="did not listen on 127.0.0.1:[0-9]+ in time"):
        with local_rpc_cluster("cpu", 1, timeout=0.3):
            pass


class NoServers:
    """A tracker where no server of the key ever registers."""

    key, address = "cpu", "127.0.0.1:1"

    def servers(self):
        raise RemoteError("no RPC server is registered under key 'cpu' at 127.0.0.1:1")


def test_a_server_that_exits_says_how_and_ends_the_wait_at_once():
    failed = local_rpc._start("RPC server 0", "json.tool", ["--no-such-option"])
    failed.popen.wait(timeout=30)
    reason = failed.exited()
    assert reason.startswith("the RPC server 0 exited with status 2: ")
    assert "--no-such-option" in reason
    start = time.monotonic()
    with pytest.raises(LocalRPCError, match="did not register .*: the RPC server 0 exited"):
        local_rpc._wait_registered(NoServers(), [failed], 1, timeout=60, start=start)
    assert time.monotonic() - start < 5
    failed.kill()


def test_servers_that_do_not_register_in_time_are_a_clear_error():
    with pytest.raises(
        LocalRPCError,
        match=r"2 RPC server\(s\) under key 'cpu' did not register with the tracker at "
        r"127.0.0.1:1 within 0.1 s: no RPC server is registered under key 'cpu'",
    ):
        local_rpc._wait_registered(NoServers(), [], 2, timeout=0.1, start=time.monotonic())


def test_free_port_is_free():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", free_port()))
