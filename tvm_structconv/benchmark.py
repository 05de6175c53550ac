"""Cross-hardware latency of one model: TVM original vs structured per target, and the peers.

:func:`run_benchmark` compiles the model for every target (:func:`compile_builds`), times each
build on remote devices through an RPC tracker (:func:`measure_remote`) or plans it as a job for
this host with the peer runtimes (:func:`plan_jobs`), runs the jobs in interleaved rounds, each
in its own worker process (:func:`run_rounds`), and records the host (:func:`describe_host`);
:class:`BenchReport` prints the table, writes the JSON with every raw sample and draws the plot.
"""

from __future__ import annotations

import datetime
import json
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tvm_structconv.peers import PEERS
from tvm_structconv.threads import available_cores
from tvm_structconv.timing import Job, Latency, measure_isolated, save_inputs

if TYPE_CHECKING:
    import numpy as np

    from tvm_structconv.frontend import ImportedModel
    from tvm_structconv.remote import RemoteDevices

__all__ = [
    "BenchReport",
    "BenchRow",
    "CompiledBuilds",
    "Cost",
    "Measurement",
    "ModelSource",
    "compile_builds",
    "describe_host",
    "measure_remote",
    "plan_jobs",
    "run_benchmark",
    "run_rounds",
]

#: The two variants of every configuration, in the order they are compiled and timed.
VARIANTS = ("original", "structured")


@dataclass
class BenchRow:
    """One measured (or unavailable) configuration."""

    target: str
    runtime: str
    variant: str
    macs: int
    params: int
    latency: Optional[Latency] = None
    note: str = ""

    @property
    def label(self) -> str:
        """``target / runtime / variant``."""
        return f"{self.target}/{self.runtime}/{self.variant}"

    @property
    def instability(self) -> Optional[str]:
        """Why the samples cannot carry a ratio (:meth:`Latency.instability`), or ``None``."""
        return self.latency.instability() if self.latency is not None else None

    @property
    def trusted(self) -> bool:
        """Measured, with stable samples: fit for a headline ratio."""
        return self.latency is not None and self.instability is None


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates and conv/linear parameters of one variant of the model."""

    macs: int = 0
    params: int = 0


@dataclass
class Measurement:
    """A row to fill and what fills it.

    Attributes
    ----------
    row
        The row its latency, or the reason there is none, goes to.
    library
        The exported TVM library (TVM builds; ``None`` for peers).
    job
        The worker job that times it on this host (``None`` when it is not timed here).
    """

    row: BenchRow
    library: Optional[str] = None
    job: Optional[Job] = None


@dataclass
class CompiledBuilds:
    """What :func:`compile_builds` made.

    Attributes
    ----------
    measurements
        One per exported build (``tvm`` and, with a tuning log, ``tvm-tuned``), per target and
        variant, in that order; the rows carry their variant's cost.
    costs
        The cost of each variant (from the structured build's rewrite report).
    tuning_notes
        ``target/variant: K tuned functions`` for every target with a tuning log.
    """

    measurements: List[Measurement]
    costs: Dict[str, Cost]
    tuning_notes: List[str]


@dataclass
class ModelSource:
    """The model under test, in every form the runtimes need.

    Attributes
    ----------
    onnx, pt2
        Model files (either may be ``None``).
    builtin
        ``create_structured`` arguments when the model is a built-in one (torch peers can then
        also run its structured variant).
    """

    onnx: Optional[str] = None
    pt2: Optional[str] = None
    builtin: Optional[Dict[str, object]] = None

    @classmethod
    def resolve(cls, model: str, workdir: Path, image_size: Optional[int] = None) -> ModelSource:
        """A path (``.onnx`` / ``.pt2``) or a built-in model name, exported into ``workdir``
        at ``image_size`` (default 224).

        Raises
        ------
        FrontendError
            If ``image_size`` is given for a model file (its input shape is its own).
        """
        from tvm_structconv.models import list_models

        cls.check_image_size(model, image_size)
        if model in list_models():
            from tvm_structconv.export import export
            from tvm_structconv.models import create_structured

            builtin = {"name": model, "image_size": image_size or 224, "seed": 0}
            built = create_structured(**builtin)
            paths = [str(workdir / f"{model}{suffix}") for suffix in (".onnx", ".pt2")]
            for path in paths:
                export(built.model, path, built.example_input, built.manifest)
            return cls(onnx=paths[0], pt2=paths[1], builtin=builtin)
        suffix = Path(model).suffix.lower()
        return cls(
            onnx=model if suffix == ".onnx" else None, pt2=model if suffix == ".pt2" else None
        )

    @staticmethod
    def check_image_size(model: str, image_size: Optional[int]) -> None:
        """Refuse ``image_size`` for anything but a built-in model name.

        Raises
        ------
        FrontendError
            If ``image_size`` is given for a model file (its input shape is its own).
        """
        from tvm_structconv.frontend import FrontendError
        from tvm_structconv.models import list_models

        if image_size is not None and model not in list_models():
            raise FrontendError(
                f"--image-size is for built-in models; {model} has the input shape it was "
                "exported with (an ONNX model with symbolic dims takes --input-shape)"
            )

    @property
    def primary(self) -> str:
        """The file the compiler imports (ONNX preferred)."""
        return self.onnx or self.pt2


@dataclass
class BenchReport:
    """All rows of one benchmark run and the facts that make them comparable."""

    model: str
    rows: List[BenchRow]
    threads: int
    meta: Dict[str, object] = field(default_factory=dict)

    def row(self, target: str, runtime: str, variant: str) -> Optional[BenchRow]:
        """The row for that configuration, if measured."""
        for row in self.rows:
            if (row.target, row.runtime, row.variant) == (target, runtime, variant):
                return row
        return None

    def format(self) -> str:
        """The table: one line per row, then the headline ratios."""
        lines = [
            f"{self.model}, batch 1, fp32, {self.threads} threads; {self.meta.get('cpu', '')}",
            f"{'target':<8}{'runtime':<17}{'variant':<11}{'median ms':>10}{'p90 ms':>9}"
            f"{'p99 ms':>9}{'GMAC':>7}{'params M':>10}  note",
        ]
        for row in self.rows:
            note = row.note
            if row.latency is not None:
                timing = (
                    f"{row.latency.median_ms:>10.2f}{row.latency.p90_ms:>9.2f}"
                    f"{row.latency.p99_ms:>9.2f}"
                )
                if row.instability:
                    note = f"UNSTABLE ({row.instability}) {note}".rstrip()
            else:
                timing = f"{'n/a':>10}{'':>9}{'':>9}"
            lines.append(
                f"{row.target:<8}{row.runtime:<17}{row.variant:<11}{timing}"
                f"{row.macs / 1e9:>7.2f}{row.params / 1e6:>10.2f}  {note}"
            )
        lines.extend(self.ratios())
        return "\n".join(lines)

    def ratios(self) -> List[str]:
        """Structured TVM vs original TVM and vs each peer's original, per target (one run).

        A ratio is printed only between rows whose samples are stable
        (:attr:`BenchRow.trusted`); for an unstable row the line says so instead.
        """
        lines = []
        for target in dict.fromkeys(row.target for row in self.rows):
            for runtime in ("tvm", "tvm-tuned"):
                ours = self.row(target, runtime, "structured")
                if ours is None or ours.latency is None:
                    continue
                if not ours.trusted:
                    lines.append(_no_ratio(f"structured {runtime} ({target})", ours, self))
                    continue
                for row in self.rows:
                    if row is ours or row.variant != "original" or row.latency is None:
                        continue
                    if row.runtime.startswith("tvm") and row.target != target:
                        continue
                    if runtime == "tvm-tuned" and not row.runtime.startswith("tvm"):
                        continue  # the peers are compared with the untuned build above
                    if not row.trusted:
                        lines.append(_no_ratio(f"{row.runtime} ({row.target})", row, self))
                        continue
                    ratio = row.latency.median_ms / ours.latency.median_ms
                    lines.append(
                        f"structured {runtime} ({target}) is {ratio:.2f}x faster than "
                        f"{row.runtime} ({row.target}) on the original model"
                    )
        return lines

    def to_json(self) -> Dict[str, object]:
        """Everything, with the raw samples."""
        rows = []
        for row in self.rows:
            entry = asdict(row)
            entry["latency"] = None
            if row.latency is not None:
                entry["samples_ms"] = list(row.latency.samples_ms)
                entry.update(
                    median_ms=row.latency.median_ms,
                    p90_ms=row.latency.p90_ms,
                    p99_ms=row.latency.p99_ms,
                    round_medians_ms=row.latency.round_medians_ms(),
                    unstable=row.instability,
                )
            rows.append(entry)
        return {
            "model": self.model,
            "threads": self.threads,
            "meta": self.meta,
            "rows": rows,
            "ratios": self.ratios(),
        }

    def save_json(self, path: str) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def plot(self, path: str) -> None:
        """Bar chart of median latency with p90 whiskers, grouped by target and runtime."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        # rows that did not run are in the table, not in the plot
        measured = [row for row in self.rows if row.latency is not None]
        groups = list(dict.fromkeys((row.target, row.runtime) for row in measured))
        figure, axes = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 2), 4.2))
        width = 0.38
        colors = {"original": "#8c8c8c", "structured": "#1f77b4"}
        for offset, variant in ((-width / 2, "original"), (width / 2, "structured")):
            for index, (target, runtime) in enumerate(groups):
                row = self.row(target, runtime, variant)
                if row is None or row.latency is None:
                    continue
                median, p90 = row.latency.median_ms, row.latency.p90_ms
                axes.bar(
                    index + offset,
                    median,
                    width,
                    color=colors[variant],
                    hatch="//" if row.instability else None,
                    edgecolor="#d62728" if row.instability else None,
                    yerr=[[0], [p90 - median]],
                    capsize=3,
                )
                # above the whisker, so the whisker never crosses the number
                axes.annotate(
                    f"{median:.3g}" + ("\nunstable" if row.instability else ""),
                    (index + offset, p90),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="#d62728" if row.instability else "black",
                )
        axes.set_xticks(range(len(groups)))
        axes.set_xticklabels([f"{runtime}\n{target}" for target, runtime in groups], fontsize=8)
        axes.set_ylabel("median latency, ms (whisker: p90)")
        axes.margins(y=0.2)  # room for the labels above the tallest whisker
        axes.set_title(f"{self.model}: batch 1, fp32, {self.threads} threads")
        legend = [Patch(color=color, label=variant) for variant, color in colors.items()]
        if any(row.instability for row in measured):
            legend.append(
                Patch(facecolor="white", edgecolor="#d62728", hatch="//", label="unstable")
            )
        axes.legend(handles=legend)
        figure.tight_layout()
        figure.savefig(path, dpi=130)
        plt.close(figure)


def _no_ratio(name: str, row: BenchRow, report: BenchReport) -> str:
    """The line printed instead of a ratio with an unstable row."""
    rounds = int(report.meta.get("rounds", 2) or 2)
    return (
        f"no ratio with {name}: its samples are unstable ({row.instability}); rerun on a "
        f"quiet machine or with more rounds (--rounds {2 * rounds})"
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compile_builds(
    imported: ImportedModel,
    targets: Sequence[str],
    folder: Path,
    progress: Callable[[str], None] = lambda message: None,
) -> CompiledBuilds:
    """Compile both variants of ``imported`` for every target and export each library to
    ``folder`` (``<target>-<runtime>-<variant>.so``).

    Each target gets its hand-scheduled build (``tvm``, tuning logs ignored) and, where the
    target has a tuning log that holds some of the model's functions, a ``tvm-tuned`` build.

    Raises
    ------
    ToolchainError
        If a target needs a cross compiler that is not installed.
    """
    from tvm_structconv.build import compile_model
    from tvm_structconv.targets import make_target
    from tvm_structconv.tuning_logs import has_database, logs_dir

    measurements: List[Measurement] = []
    costs: Dict[str, Cost] = {}
    tuning_notes: List[str] = []
    for target in targets:
        logs = logs_dir(make_target(target))
        for variant in VARIANTS:
            structured = variant == "structured"
            progress(f"compiling {variant} for {target}")
            builds = [
                ("tvm", compile_model(imported, target, structured=structured, tuning_logs=False))
            ]
            if has_database(logs):
                progress(f"compiling {variant} for {target} with the tuning log {logs}")
                tuned = compile_model(imported, target, structured=structured, tuning_logs=logs)
                if tuned.tuned:
                    builds.append(("tvm-tuned", tuned))
                tuning_notes.append(f"{target}/{variant}: {len(tuned.tuned)} tuned functions")
            for runtime, compiled in builds:
                report = compiled.report
                if report is not None:
                    costs["structured"] = Cost(report.macs_after, report.params_after)
                    costs["original"] = Cost(report.macs_before, report.params_before)
                library = str(folder / f"{target}-{runtime}-{variant}.so")
                compiled.export(library)
                measurements.append(Measurement(BenchRow(target, runtime, variant, 0, 0), library))
    for measurement in measurements:
        cost = costs.get(measurement.row.variant, Cost())
        measurement.row.macs, measurement.row.params = cost.macs, cost.params
    return CompiledBuilds(measurements, costs, tuning_notes)


def measure_remote(
    builds: Sequence[Measurement],
    remote: RemoteDevices,
    inputs: Sequence[np.ndarray],
    repeat: int,
    min_repeat_ms: int,
    progress: Callable[[str], None] = lambda message: None,
) -> None:
    """Time every TVM build on the tracker's devices; fill each row's latency or note."""
    from tvm_structconv.remote import RemoteJob

    progress(
        f"measuring {len(builds)} TVM builds on {remote.servers()} device(s) of key {remote.key!r}"
    )
    results = remote.measure_all(
        [
            RemoteJob(build.row.label, build.library, inputs, repeat, min_repeat_ms)
            for build in builds
        ]
    )
    for build in builds:
        build.row.latency, build.row.note = results[build.row.label]
        build.row.note = build.row.note and f"n/a ({build.row.note})"


def plan_jobs(
    builds: Sequence[Measurement],
    source: ModelSource,
    peers: Sequence[str],
    costs: Dict[str, Cost],
    inputs_path: str,
    threads: int,
    repeat: int,
    min_repeat_ms: int,
    local_builds: bool = True,
) -> List[Measurement]:
    """The measurements to run on this host, in the order every round runs them.

    With ``local_builds``, the x86 TVM builds get a job each and every other target's build a
    note (it runs on its device, through ``--rpc-tracker``); then every peer gets a new row per
    variant, with its job.
    """
    local: List[Measurement] = []
    if local_builds:
        for build in builds:
            row = build.row
            if row.target != "x86":
                row.note = f"n/a ({row.target} builds run on their device: use --rpc-tracker)"
                continue
            build.job = Job(
                "tvm",
                row.variant,
                inputs_path,
                threads,
                repeat,
                min_repeat_ms,
                library=build.library,
            )
            local.append(build)
    for peer in peers:
        for variant in VARIANTS:
            cost = costs.get(variant, Cost())
            job = Job(
                peer,
                variant,
                inputs_path,
                threads,
                repeat,
                min_repeat_ms,
                onnx=source.onnx,
                pt2=source.pt2,
                builtin=source.builtin,
            )
            row = BenchRow("host", peer, variant, cost.macs, cost.params)
            reason = job.unavailable()
            if reason is not None:  # listed once as n/a, never run
                row.note = f"n/a ({reason})"
            local.append(Measurement(row, job=job))
    return local


def run_rounds(
    measurements: Sequence[Measurement],
    rounds: int,
    progress: Callable[[str], None] = lambda message: None,
) -> None:
    """Run every job ``rounds`` times, interleaved (so drift hits every row alike), each run in
    a fresh worker process; merge the samples into the rows. A row whose job fails once keeps
    the reason as its note and is not run again."""
    for round_index in range(rounds):
        for measurement in measurements:
            row = measurement.row
            if row.note or measurement.job is None:
                continue
            progress(f"round {round_index + 1}/{rounds}: {row.label}")
            latency, reason = measure_isolated(measurement.job)
            if latency is None:
                row.note = f"n/a ({reason})"
                row.latency = None
            else:
                row.latency = latency if row.latency is None else row.latency.merged(latency)


def describe_host(
    repeat: int, rounds: int, min_repeat_ms: int, tuning_notes: Sequence[str] = ()
) -> Dict[str, object]:
    """The facts that make a run's numbers comparable: CPU, date, TVM version, timing settings,
    which schedules the builds got."""
    import tvm

    return {
        "cpu": _cpu_name(),
        "llvm_cpu": tvm.target.codegen.llvm_get_system_cpu(),
        "date": datetime.date.today().isoformat(),
        "tvm": tvm.__version__,
        "repeat": repeat,
        "rounds": rounds,
        "min_repeat_ms": min_repeat_ms,
        "schedules": "tvm: hand schedules; tvm-tuned: the target's tuning log applied "
        "(hand schedules for the functions it does not hold)",
        "tuning": list(tuning_notes),
    }


def run_benchmark(
    model: Union[str, ModelSource],
    targets: Sequence[str] = ("x86",),
    peers: Sequence[str] = PEERS,
    threads: Optional[int] = None,
    repeat: int = 10,
    min_repeat_ms: int = 100,
    rounds: int = 2,
    manifest: Optional[str] = None,
    rpc_tracker: Optional[str] = None,
    device_key: Optional[str] = None,
    workdir: Optional[str] = None,
    image_size: Optional[int] = None,
    progress: Callable[[str], None] = lambda message: None,
    input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None,
) -> BenchReport:
    """Measure ``model`` (path or built-in name) on every target and every peer.

    Parameters
    ----------
    model
        ``.onnx`` / ``.pt2`` path, a built-in model name (exported first), or a
        :class:`ModelSource` (an ONNX file and a ``.pt2`` of the same model: the compiler
        imports the ONNX file, the torch peers run the ``.pt2``).
    targets
        Target names (:func:`tvm_structconv.targets.known_targets`).
    peers
        Peer runtimes (``onnxruntime``, ``torch``, ``inductor``), on this host.
    threads
        Threads of every runtime (default: this host's cores).
    repeat, min_repeat_ms, rounds
        Samples per round, the least time per sample, and interleaved rounds (original and
        structured alternate, so drift hits both alike).
    manifest
        Manifest file (default: sidecar / ONNX metadata).
    rpc_tracker, device_key
        Measure the TVM builds on the tracker's servers registered under the key instead of here.
    workdir
        Where the exported models, inputs and libraries go (default: a new temporary folder).
    image_size
        Input size of a built-in model (default 224); an error for a model file.
    progress
        Called with a message before each step.
    input_shapes
        Shapes of an ONNX model's inputs with symbolic dims
        (:func:`~tvm_structconv.frontend.load_model`).
    """
    from tvm_structconv.frontend import load_model
    from tvm_structconv.peers import PeerUnavailable
    from tvm_structconv.targets import ALIASES, make_target

    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise PeerUnavailable(f"unknown peer {unknown[0]!r}; known peers: {', '.join(PEERS)}")
    targets = [ALIASES.get(target, target) for target in targets]  # x86_64 is x86: timed here
    for target in targets:
        make_target(target)  # unknown names fail before any work
    if not isinstance(model, ModelSource):
        ModelSource.check_image_size(model, image_size)
    threads = threads or available_cores()
    folder = Path(workdir or tempfile.mkdtemp(prefix="structconv-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, ModelSource):
        source, model = model, Path(model.primary).stem
        progress(f"preparing {model}")
    else:
        progress(f"preparing {model}")
        source = ModelSource.resolve(model, folder, image_size)
    imported = load_model(source.primary, manifest=manifest, input_shapes=input_shapes)
    inputs = [spec.random(0) for spec in imported.inputs]
    inputs_path = save_inputs(str(folder / "inputs.npz"), inputs)
    remote = None
    if rpc_tracker:
        from tvm_structconv.remote import RemoteDevices

        remote = RemoteDevices(rpc_tracker, device_key or "")
        remote.servers()  # an unreachable tracker fails before any compilation

    builds = compile_builds(imported, targets, folder, progress)
    if remote is not None:
        measure_remote(builds.measurements, remote, inputs, repeat, min_repeat_ms, progress)
    local = plan_jobs(
        builds.measurements,
        source,
        peers,
        builds.costs,
        inputs_path,
        threads,
        repeat,
        min_repeat_ms,
        local_builds=remote is None,
    )
    run_rounds(local, rounds, progress)
    rows = [build.row for build in builds.measurements]
    rows.extend(measurement.row for measurement in local if measurement.library is None)  # peers
    return BenchReport(
        Path(model).stem if model.endswith((".onnx", ".pt2")) else model,
        rows,
        threads,
        describe_host(repeat, rounds, min_repeat_ms, builds.tuning_notes),
    )
