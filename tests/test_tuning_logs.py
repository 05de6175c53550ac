"""Where tuning logs are read and written: the user's root ($STRUCTCONV_TUNING_LOGS or the user
cache, never the package), the logs shipped with the package (read-only), and which one a
compile applies; a tune that leaves tasks untried says how many trials reach them all."""

import filecmp
from pathlib import Path

import pytest

import tvm_structconv
from tvm_structconv.cli import main
from tvm_structconv.targets import make_target
from tvm_structconv.tune import TaskResult, TuneResult
from tvm_structconv.tuning_logs import (
    DATABASE_FILES,
    database_dir,
    has_database,
    logs_dir,
    logs_root,
    seed_from_shipped,
    shipped_logs_root,
    user_logs_dir,
)

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(tvm_structconv.__file__).resolve().parent


@pytest.fixture(scope="module")
def znver4():
    """The CPU the repository's shipped log was tuned on (built for here, never run)."""
    return make_target("x86", mcpu="znver4")


def _fake_database(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in DATABASE_FILES:
        (folder / name).write_text("")
    return folder


def test_the_user_root_is_the_variable_else_the_user_cache_never_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("STRUCTCONV_TUNING_LOGS", str(tmp_path / "mine"))
    assert logs_root() == tmp_path / "mine"
    monkeypatch.delenv("STRUCTCONV_TUNING_LOGS")
    monkeypatch.setenv("STRUCTCONV_CACHE", str(tmp_path / "cache"))
    assert logs_root() == tmp_path / "cache" / "tuning_logs"
    monkeypatch.delenv("STRUCTCONV_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert logs_root() == tmp_path / "home" / ".cache" / "tvm_structconv" / "tuning_logs"
    assert PACKAGE not in logs_root().parents and REPO not in logs_root().parents


def test_the_shipped_logs_are_the_repositorys(znver4):
    assert shipped_logs_root() == REPO / "tuning_logs"
    assert has_database(shipped_logs_root() / "x86-znver4")


def test_a_compile_reads_the_users_log_first_then_the_shipped_one(znver4, user_tuning_logs):
    shipped = shipped_logs_root() / "x86-znver4"
    assert logs_dir(znver4) == shipped  # nothing of the user's for this CPU
    user = _fake_database(user_tuning_logs / "x86-znver4")
    try:
        assert logs_dir(znver4) == user == user_logs_dir(znver4)
    finally:
        for name in DATABASE_FILES:
            (user / name).unlink()
    # a CPU nothing ships for: the user's (empty) folder, where tune would write
    skylake = make_target("x86", mcpu="skylake-avx512")
    assert logs_dir(skylake) == user_tuning_logs / "x86-skylake-avx512"


def test_a_root_given_by_hand_reads_like_the_variable(znver4, tmp_path):
    assert database_dir(znver4, tmp_path) == tmp_path / "x86-znver4"
    assert database_dir(znver4, _fake_database(tmp_path / "db")) == tmp_path / "db"
    assert logs_dir(znver4, tmp_path) == tmp_path / "x86-znver4"


def test_a_new_user_log_starts_from_the_shipped_records(znver4, tmp_path):
    shipped = shipped_logs_root() / "x86-znver4"
    folder = tmp_path / "x86-znver4"
    assert seed_from_shipped(folder, znver4)
    assert all(filecmp.cmp(shipped / name, folder / name, shallow=False) for name in DATABASE_FILES)
    assert not seed_from_shipped(folder, znver4)  # an existing database is left alone
    assert not seed_from_shipped(shipped, znver4)  # never onto itself
    assert not seed_from_shipped(tmp_path / "other", make_target("x86", mcpu="skylake-avx512"))
    assert not (tmp_path / "other").exists()


def test_compile_says_it_applied_the_shipped_log(exported_small_net, znver4, tmp_path, capsys):
    library = tmp_path / "net.so"
    argv = ["compile", str(exported_small_net["onnx"]), "--mcpu", "znver4", "-o", str(library)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    shipped = shipped_logs_root() / "x86-znver4"
    assert f"note: tuning log {shipped}: tuned schedules for 0 functions" in out
    assert library.is_file()


def test_untried_tasks_are_a_warning_with_the_trials_that_reach_them():
    tasks = [TaskResult("a", 1, trials=8), TaskResult("b", 2), TaskResult("c", 1)]
    result = TuneResult(Path("logs"), tasks, trials_per_iter=8)
    assert [task.name for task in result.untried()] == ["b", "c"]
    assert result.coverage_warning() == (
        "2 of 3 tasks got no trial (the budget ran out first); --trials 24 "
        "(tasks x --trials-per-iter 8) reaches every task"
    )
    for task in tasks:
        task.trials = 8
    assert result.coverage_warning() is None
