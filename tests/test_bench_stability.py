"""structconv bench on noisy numbers: unstable samples (rounds apart, or two clusters) mark
their row and never make a headline ratio; rows that cannot run are listed once as n/a, never
run and never drawn; value labels sit above the whiskers; --image-size on a file is an error.
(A target alias of this host, timed here: the bench command of tests/test_benchmark.py.)"""

import matplotlib.axes
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_structconv.benchmark import (
    BenchReport,
    BenchRow,
    Cost,
    ModelSource,
    plan_jobs,
    run_rounds,
)
from tvm_structconv.cli import main
from tvm_structconv.timing import Latency


def _rounds(*rounds):
    """A latency of several rounds, merged as run_rounds merges them."""
    latency = Latency(tuple(rounds[0]))
    for samples in rounds[1:]:
        latency = latency.merged(Latency(tuple(samples)))
    return latency


def test_rounds_far_apart_are_unstable():
    # the torch eager: ~270 ms in one round, ~3.4 ms in the next
    latency = _rounds([268.0, 271.5, 270.2, 275.0], [3.4, 3.5, 3.3, 3.4])
    assert latency.rounds == (4, 4)
    assert latency.round_medians_ms() == [270.85, 3.4]
    assert latency.instability() == "round medians 271, 3.4 ms differ by 7866 %"


def test_two_clusters_in_one_round_are_unstable():
    latency = Latency((3.4, 3.5, 3.3, 120.0, 118.0, 3.4, 121.0, 3.5, 3.6, 119.0))
    assert latency.instability() == "bimodal: 6 samples <= 3.6 ms, 4 >= 118 ms"
    one_outlier = Latency((3.4, 3.5, 3.3, 120.0, 3.4, 3.5, 3.6, 3.4, 3.5, 3.4))
    assert one_outlier.instability() is None  # one slow sample is a tail, not a second mode


@settings(max_examples=20)
@given(
    base=st.floats(0.05, 500.0),
    jitter=st.lists(st.floats(-0.1, 0.1), min_size=6, max_size=30),
    rounds=st.integers(1, 3),
)
def test_samples_within_ten_percent_are_stable(base, jitter, rounds):
    samples = [base * (1 + j) for j in jitter]
    size = len(samples) // rounds
    chunks = [samples[i * size : (i + 1) * size] for i in range(rounds - 1)]
    latency = _rounds(*chunks, samples[(rounds - 1) * size :])
    assert latency.instability() is None
    assert len(latency.samples_ms) == len(samples)


def _report(torch_latency):
    stable = lambda ms: _rounds([ms, ms * 1.01, ms * 0.99], [ms * 1.02, ms, ms * 0.98])  # noqa: E731
    rows = [
        BenchRow("x86", "tvm", "original", 2, 2, stable(2.0)),
        BenchRow("x86", "tvm", "structured", 1, 1, stable(1.0)),
        BenchRow("aarch64", "tvm", "original", 2, 2, note="n/a (use --rpc-tracker)"),
        BenchRow("host", "onnxruntime", "original", 2, 2, stable(3.0)),
        BenchRow("host", "torch", "original", 2, 2, torch_latency),
        BenchRow("host", "torch", "structured", 1, 1, note="n/a (built-in models only)"),
    ]
    return BenchReport("net", rows, 2, {"rounds": 2})


def test_an_unstable_peer_is_marked_and_makes_no_headline():
    report = _report(_rounds([268.0, 271.5, 270.2], [3.4, 3.5, 3.3]))
    table = report.format()
    torch_line = next(line for line in table.splitlines() if line.startswith("host    torch "))
    assert "UNSTABLE (round medians 270, 3.4 ms differ by 7847 %)" in torch_line
    assert report.ratios() == [
        "structured tvm (x86) is 2.00x faster than tvm (x86) on the original model",
        "structured tvm (x86) is 3.00x faster than onnxruntime (host) on the original model",
        "no ratio with torch (host): its samples are unstable (round medians 270, 3.4 ms "
        "differ by 7847 %); rerun on a quiet machine or with more rounds (--rounds 4)",
    ]
    rows = {(r["runtime"], r["variant"]): r for r in report.to_json()["rows"]}
    assert rows[("torch", "original")]["round_medians_ms"] == [270.2, 3.4]
    assert rows[("torch", "original")]["unstable"].startswith("round medians")
    assert rows[("onnxruntime", "original")]["unstable"] is None


def test_an_unstable_build_of_ours_makes_no_headline_at_all():
    report = _report(_rounds([5.0, 5.1], [5.0, 4.9]))
    ours = report.row("x86", "tvm", "structured")
    ours.latency = _rounds([1.0, 1.0, 1.1], [2.0, 2.1, 2.0])
    assert report.ratios() == [
        "no ratio with structured tvm (x86): its samples are unstable (round medians 1, 2 ms "
        "differ by 100 %); rerun on a quiet machine or with more rounds (--rounds 4)"
    ]


def test_the_plot_draws_measured_rows_with_labels_above_the_whiskers(tmp_path, monkeypatch):
    labels = []
    annotate = matplotlib.axes.Axes.annotate

    def recording(self, text, xy, *args, **kwargs):
        labels.append((text, xy[1]))
        return annotate(self, text, xy, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", recording)
    ticks = []
    set_ticklabels = matplotlib.axes.Axes.set_xticklabels
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "set_xticklabels",
        lambda self, names, **kw: ticks.extend(names) or set_ticklabels(self, names, **kw),
    )
    report = _report(_rounds([268.0, 271.5, 270.2], [3.4, 3.5, 3.3]))
    report.plot(str(tmp_path / "bench.png"))
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    measured = [row for row in report.rows if row.latency is not None]
    assert ticks == ["tvm\nx86", "onnxruntime\nhost", "torch\nhost"]  # no aarch64 slot
    expected = {
        (
            f"{row.latency.median_ms:.3g}" + ("\nunstable" if row.instability else ""),
            row.latency.p90_ms,
        )
        for row in measured
    }
    assert len(labels) == len(measured) and set(labels) == expected
    assert ("136\nunstable", report.row("host", "torch", "original").latency.p90_ms) in labels


def test_rows_that_cannot_run_are_listed_once_and_never_run(tmp_path):
    source = ModelSource(pt2=str(tmp_path / "net.pt2"))
    costs = {"original": Cost(2, 2), "structured": Cost(1, 1)}
    local = plan_jobs([], source, ["onnxruntime", "torch"], costs, "in.npz", 1, 2, 5)
    notes = {row.label: row.note for row in (m.row for m in local)}
    assert notes == {
        "host/onnxruntime/original": "n/a (onnxruntime needs an ONNX model)",
        "host/onnxruntime/structured": "n/a (onnxruntime needs an ONNX model)",
        "host/torch/original": "",
        "host/torch/structured": "n/a (torch runs the structured variant only for built-in models)",
    }
    progress = []
    runnable = [m for m in local if not m.row.note]
    assert [m.row.label for m in runnable] == ["host/torch/original"]
    run_rounds([m for m in local if m.row.note], 3, progress.append)
    assert progress == []  # no worker started, no progress line
    # an ONNX file alone: torch has no program to run, of either variant
    onnx_only = plan_jobs(
        [], ModelSource(onnx=str(tmp_path / "net.onnx")), ["torch"], costs, "in.npz", 1, 2, 5
    )
    assert {m.row.label: m.row.note for m in onnx_only} == {
        "host/torch/original": "n/a (torch needs a torch.export program (.pt2))",
        "host/torch/structured": "n/a (torch runs the structured variant only for built-in models)",
    }


def test_image_size_on_a_model_file_is_an_error(exported_small_net, capsys):
    model = str(exported_small_net["onnx"])
    assert main(["bench", model, "--image-size", "64", "--peers", ""]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"structconv: error: --image-size is for built-in models; {model} has the input shape "
        "it was exported with (an ONNX model with symbolic dims takes --input-shape)\n"
    )
