"""MetaSchedule tuning: a few trials on the small structured net write a database, compiling
with it applies the tuned schedules (the database is hit) and stays exact; tuning resumes from
the database, its candidates timed on a real RPC server; bad requests are refused."""

from collections import Counter

import numpy as np
import pytest
import tvm_ffi

from tvm_structconv.build import compile_model
from tvm_structconv.frontend import load_model
from tvm_structconv.local_rpc import local_rpc_cluster
from tvm_structconv.targets import make_target
from tvm_structconv.tune import TuneError, conv_tasks, tune_model
from tvm_structconv.tuning_logs import has_database, logs_dir, open_database

from small_nets import structured_net


@pytest.fixture(scope="module")
def net():
    model, x, manifest = structured_net()
    return load_model(model, x, manifest), x, model(x).detach().numpy()


@pytest.fixture(scope="module")
def tuned(net, tmp_path_factory):
    imported, _, _ = net
    folder = tmp_path_factory.mktemp("logs") / "x86"
    result = tune_model(
        imported, "x86", trials=8, folder=folder, trials_per_iter=4, progress=False, seed=0
    )
    return folder, result


@pytest.mark.slow
def test_tuning_writes_a_database_with_measured_records(tuned):
    folder, result = tuned
    assert has_database(folder)
    # the two structured convs and the classifier (a Linear layer runs as a 1x1 conv)
    assert sorted(task.weight for task in result.tasks) == [1, 1, 1]
    # MetaSchedule gives every task whole rounds of candidates: at least the 8 trials asked for
    trials = sum(task.trials for task in result.tasks)
    assert trials >= 8 and all(task.trials > 0 for task in result.tasks)
    assert result.records_before == 0 and result.records_after == trials
    for task in result.tasks:
        assert task.best_ms is not None and 0 < task.best_ms < 100


@pytest.mark.slow
def test_compiling_with_the_database_applies_tuned_schedules_exactly(net, tuned):
    imported, x, expected = net
    folder, result = tuned
    compiled = compile_model(imported, "x86", tuning_logs=folder)
    assert sorted(compiled.tuned) == sorted(task.name for task in result.tasks)  # hit
    assert any(str(folder) in note for note in compiled.notes)
    (got,) = compiled.run(x.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    untuned = compile_model(imported, "x86", tuning_logs=False)
    assert untuned.tuned == [] and not any("tuning log" in note for note in untuned.notes)


def measured(folder) -> Counter:
    """The database's records as (workload, trace, run seconds): a multiset."""
    return Counter(
        (
            tvm_ffi.structural_hash(record.workload.mod),
            str(record.trace),
            tuple(float(seconds) for seconds in record.run_secs),
        )
        for record in open_database(folder).get_all_tuning_records()
    )


@pytest.mark.slow
def test_tuning_again_on_an_rpc_server_adds_to_the_database(net, tuned):
    # one run checks both: a second run resumes the first one's database, and its candidates
    # are timed on a real RPC server (a tracker and a server on 127.0.0.1)
    imported, _, _ = net
    folder, first = tuned
    before = measured(folder)
    with local_rpc_cluster("tune-cpu", 1) as cluster:
        again = tune_model(
            imported,
            "x86",
            trials=2,
            folder=folder,
            trials_per_iter=2,
            rpc_tracker=cluster.address,
            device_key="tune-cpu",
            progress=False,
            seed=1,
        )
    assert again.records_before == first.records_after
    assert again.records_after == first.records_after + 2
    # the second run tuned the same tasks: its records joined the first run's workloads
    # instead of starting new ones (which a compile would then look up apart)
    assert sorted(t.name for t in again.tasks) == sorted(t.name for t in first.tasks)
    records = open_database(folder).get_all_tuning_records()
    assert len(records) == again.records_after
    assert len({tvm_ffi.structural_hash(r.workload.mod) for r in records}) == len(first.tasks)
    # the two new records were timed on the server: a candidate that failed to run would be
    # recorded with MetaSchedule's 1e10 s
    timed = [task for task in again.tasks if task.trials]
    assert timed and all(task.best_ms is not None for task in timed)
    new = measured(folder) - before
    assert sum(new.values()) == 2, new
    assert all(0 < seconds < 1 for _, _, run_secs in new for seconds in run_secs), new


def test_tasks_are_the_fused_convs_weighted_by_calls():
    from tvm_structconv.build import prepare_module
    from tvm_structconv.frontend import load_model as load
    from tvm_structconv.models import create_structured
    from tvm_structconv.schedules.packing import conv_layout

    built = create_structured("resnet18", seed=0)
    target = make_target("x86")
    imported = load(built.model, built.example_input, built.manifest)
    prepared = prepare_module(imported, True, layout=conv_layout(target))
    tasks = conv_tasks(prepared.mod, target)
    # 20 convs and the classifier (a Linear layer as a 1x1 conv) in ResNet-18, of which the
    # stride-1 structured 3x3 convs at 56², 28² and 14² run as Winograd (hand schedule, no
    # task); structurally equal functions would share a task
    winograd = [layer for layer in prepared.report.rewritten if layer.kernel != "direct"]
    assert len(winograd) == 10
    assert sum(task.weight for task in tasks) == 21 - len(winograd)
    assert len(tasks) <= 21 - len(winograd)
    assert all("structured_conv2d" in task.task_name for task in tasks)


def test_bad_requests_are_refused(net, tmp_path):
    imported, _, _ = net
    with pytest.raises(TuneError, match="CPU"):
        tune_model(imported, "cuda", trials=4, folder=tmp_path)
    with pytest.raises(TuneError, match="positive"):
        tune_model(imported, "x86", trials=0, folder=tmp_path)
    with pytest.raises(TuneError, match="RPC tracker"):
        tune_model(imported, "aarch64", trials=4, folder=tmp_path)
    with pytest.raises(TuneError, match="device-key"):
        tune_model(imported, "x86", trials=4, folder=tmp_path, rpc_tracker="127.0.0.1:9")
    with pytest.raises(FileNotFoundError, match="no tuning database"):
        compile_model(imported, "x86", tuning_logs=tmp_path / "missing")
    assert logs_dir(make_target("x86")).name.startswith("x86-")
