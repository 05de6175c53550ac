"""pinned_threads: the one place TVM_NUM_THREADS is set; restored on exit."""

import os

import pytest

from tvm_structconv.threads import (
    ALL_THREAD_VARIABLES,
    TVM_THREADS,
    available_cores,
    pinned_threads,
    thread_environment,
)


def test_pinned_threads_sets_and_restores(monkeypatch):
    monkeypatch.delenv(TVM_THREADS, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with pinned_threads(3) as threads:
        assert threads == 3 and os.environ[TVM_THREADS] == "3"
        assert os.environ["OMP_NUM_THREADS"] == "7"  # only TVM's by default
    assert TVM_THREADS not in os.environ
    with pytest.raises(RuntimeError), pinned_threads(2, ALL_THREAD_VARIABLES):
        assert os.environ["OMP_NUM_THREADS"] == "2"
        raise RuntimeError
    assert os.environ["OMP_NUM_THREADS"] == "7" and TVM_THREADS not in os.environ


def test_without_a_count_the_users_setting_stays(monkeypatch):
    monkeypatch.setenv(TVM_THREADS, "5")
    with pinned_threads() as threads:
        assert threads == 5 and os.environ[TVM_THREADS] == "5"
    monkeypatch.delenv(TVM_THREADS)
    with pinned_threads() as threads:
        assert threads == available_cores() and os.environ[TVM_THREADS] == str(threads)


def test_thread_environment_sets_every_runtime():
    environment = thread_environment(4, base={"PATH": "/bin"})
    assert environment == {"PATH": "/bin", **{variable: "4" for variable in ALL_THREAD_VARIABLES}}
