"""The latency table: every layer x candidate, cached per target and reused until the target,
TVM, the threads or the schedules change."""

import shutil

import pytest
import torch
import torch.nn as nn
import tvm

import tvm_structconv.schedules as schedules
from tvm_structconv.planner.planning import table_header
from tvm_structconv.planner.source import ModelSource
from tvm_structconv.planner.table import (
    KernelCache,
    _expected,
    _layers,
    _signature,
    measure_table,
    schedules_hash,
)
from tvm_structconv.planner.timers import COLD, KernelSampling, LocalTimer, RemoteTimer, Timer
from tvm_structconv.targets import make_target


class CountingTimer:
    """Stands in for the device: counts the kernels it is asked for and answers 1 ms each
    (the end-to-end tests time kernels for real)."""

    label = "local"

    def __init__(self):
        self.timed = 0

    def time_kernels(self, kernels):
        self.timed += len(kernels)
        return {key: 1.0 for key in kernels}


def test_local_timer_times_real_kernels():
    from tvm import te

    data = te.placeholder((64, 64), name="data")
    doubled = te.compute((64, 64), lambda i, j: data[i, j] * 2, name="doubled")
    func = te.create_prim_func([data, doubled])
    (latency,) = (
        LocalTimer(make_target("x86"), rounds=2, min_repeat_ms=1).time_kernels({"k": func}).values()
    )
    assert 0 < latency < 10


def test_both_timers_share_the_mode_and_the_sampling_of_a_kernel():
    target = make_target("x86")
    with pytest.raises(TypeError, match="abstract"):
        Timer(target)  # type: ignore[abstract]
    warm, cold = LocalTimer(target, min_repeat_ms=7), LocalTimer(target, cold=True)
    assert (warm.mode, cold.mode) == ("warm", "cold weights")
    assert warm.kernel_sampling() == KernelSampling(repeat=1, min_repeat_ms=7, f_preproc="")
    assert cold.kernel_sampling() == KernelSampling(repeat=3, min_repeat_ms=0, f_preproc=COLD)
    assert issubclass(RemoteTimer, Timer) and RemoteTimer.kernel_sampling is Timer.kernel_sampling


def test_the_table_covers_every_layer_and_candidate_and_is_reused(planner_net, tmp_path):
    model, x = planner_net
    target = make_target("x86")
    source = ModelSource(model, x)
    header = table_header(target, 1)
    path = tmp_path / "table.json"
    timer = CountingTimer()
    first = measure_table(source, target, timer, header, path)
    names = [layer.name for layer in first.layers]
    assert names == ["stem.weight", "down.weight", "mix.weight", "head.weight"]
    described = {name: [c.describe() for c in first.candidates[name]] for name in names}
    assert described["down.weight"] == [
        "leave",
        "c=16,n=2x2",
        "c=8,n=3x3",
        "c=8,n=2x2",
        "c=4,n=3x3",
        "c=4,n=2x2",
    ]
    assert described["mix.weight"] == ["leave", "c=16,n=1x1", "c=8,n=1x1"]
    assert described["stem.weight"] == ["leave", "c=3,n=2x2", "c=1,n=3x3", "c=1,n=2x2"]
    # every candidate of this net is rewritten by the compiler and timed
    assert all(
        latency is not None and latency > 0 for row in first.latency_ms.values() for latency in row
    )
    assert first.measured == timer.timed == 16 and first.reused == 0
    again = measure_table(source, target, CountingTimer(), header, path)
    assert again.measured == 0 and again.reused == 16
    assert again.latency_ms == first.latency_ms
    # another target: nothing reused, the reason said
    other = table_header(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}), 1)
    assert KernelCache.open(path, other).dropped == "target changed"


def test_a_changed_schedule_or_thread_count_invalidates_the_cache(tmp_path, monkeypatch):
    copy = tmp_path / "schedules"
    shutil.copytree(schedules.__file__.rsplit("/", 1)[0], copy)
    monkeypatch.setattr(schedules, "__file__", str(copy / "__init__.py"))
    before = schedules_hash()
    header = table_header(make_target("x86"), 1)
    cache = KernelCache(tmp_path / "table.json", header, {"abc": 1.5})
    cache.save()
    assert KernelCache.open(cache.path, header).kernels == {"abc": 1.5}
    with open(copy / "cpu" / "conv.py", "a") as file:
        file.write("\n# a changed schedule\n")
    assert schedules_hash() != before
    changed = KernelCache.open(cache.path, table_header(make_target("x86"), 1))
    assert changed.kernels == {} and changed.dropped == "schedules changed"
    threads = KernelCache.open(cache.path, {**header, "threads": "2"})
    assert threads.kernels == {} and threads.dropped == "threads changed"


@pytest.mark.parametrize("content", ["{", '{"format": "other"}'])
def test_an_unreadable_cache_is_measured_again(tmp_path, content):
    path = tmp_path / "table.json"
    path.write_text(content)
    cache = KernelCache.open(path, {"target": "x"})
    assert cache.kernels == {} and cache.dropped


class Block(nn.Module):
    """A ResNet basic block with a downsample branch: the rewrite reports the downsample conv
    first, the fused model calls it last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.downsample = nn.Conv2d(8, 16, 1, stride=2)

    def forward(self, x):
        out = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(out + self.downsample(x))


def test_each_layer_gets_the_kernel_of_its_own_shape_whatever_the_report_order(tmp_path):
    target = make_target("x86")
    torch.manual_seed(0)
    table = measure_table(
        ModelSource(Block().eval(), torch.randn(1, 8, 8, 8)),
        target,
        CountingTimer(),
        table_header(target, 1),
        tmp_path / "table.json",
    )
    layers, kernels = _layers(ModelSource(Block().eval(), torch.randn(1, 8, 8, 8)), target)
    for layer in layers:
        assert _signature(kernels[layer.name]) == _expected(layer.weight_shape, None)
    assert {layer.name for layer in table.layers} == {
        "conv1.weight",
        "conv2.weight",
        "downsample.weight",
    }
