"""Kernel by kernel: where the project's original build spends its time against onnxruntime.

``single_thread.py`` and ``zoo.py --time`` say *whether* the original build keeps up with
onnxruntime on a model; this script says *where* it does not. For each family it builds the
original model with TVM (the project's x86 hand schedules, as ``structconv compile`` does) and
opens it in onnxruntime, both on one thread (``--threads``), and alternates the two run by run:

* TVM's Relax VM with an instrument (``VirtualMachine.set_instrument``) that times every call
  the VM makes: each kernel and each VM builtin (allocation, shape checks);
* onnxruntime with its profiler on (``SessionOptions.enable_profiling``): the time of every
  node's kernel.

Each call site is summarised by its minimum over the runs (the least disturbed one), so a run
on a shared machine still compares like with like. The report sums the minima by kernel kind
(convolutions, pools, layout changes, ...), puts the sum of kernels next to the end-to-end
minimum of an uninstrumented build and session (the rest is time between kernels), and pairs
each onnxruntime convolution with the TVM kernel that computes the same output (same output
size and a weight of the same size among its arguments), grouped by conv shape. The
instrument's Python callback costs a few microseconds per call on both sides of a kernel, so
very short kernels read a little slow on the TVM side. Kinds come from TVM's function names
and onnxruntime's op types, and each runtime fuses differently: TVM's DenseNet concat kernel
carries the BatchNorm and ReLU after it, while onnxruntime runs that BatchNorm as an NCHWc
``Conv`` node of one input channel per group and a 1x1 kernel (counted here as elementwise,
not as a conv); the per-node list in the JSON has both sides.

    python benchmarks/kernel_compare.py --families googlenet,resnet50
    python benchmarks/kernel_compare.py --families resnet18 --runs 60   # a built-in model
    python benchmarks/kernel_compare.py --families bottleneck2,bottleneck12  # weights cached or not

Writes ``benchmarks/results/kernel_compare-<cpu>[-<n>threads].{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from single_thread import create  # noqa: E402  (imports no TVM: the thread count is still free)

KINDS = (
    ("conv", ("conv",)),
    ("matmul", ("matmul", "dense", "gemm", "linear")),
    ("pool", ("pool", "mean", "avg", "max")),
    ("layout", ("transpose", "reshape", "layout", "flatten", "permute", "squeeze")),
    ("concat/split", ("concat", "split", "slice")),
    ("elementwise", ("add", "relu", "mul", "sigmoid", "clip", "batch_norm", "gelu", "erf")),
    ("normalisation", ("norm", "softmax")),
    ("vm builtin", ("vm.builtin", "builtin")),
)


def kind_of(name: str) -> str:
    """The kernel kind of a TVM function symbol or an onnxruntime op type (lower case)."""
    name = name.lower()
    for kind, words in KINDS:
        if any(word in name for word in words):
            return kind
    return "other"


@dataclass
class CallSite:
    """One kernel call of a model's run: what it is and its time in each run (ms)."""

    name: str
    kind: str
    output_size: int
    argument_sizes: Tuple[int, ...]
    conv: Optional[Tuple[int, ...]] = None  # onnxruntime convs: (Cout, Cin/g, kh, kw, H, W, g)
    times: List[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The minimum over the runs, ms."""
        return min(self.times)


class TVMKernelTimer:
    """Times every call of a Relax VM through its instrument; one list of call sites per run."""

    def __init__(self, vm) -> None:
        self.sites: List[CallSite] = []
        self._position = 0
        self._start = 0.0
        vm.set_instrument(self._instrument)

    def start_run(self) -> None:
        """Call before each run of ``main``."""
        self._position = 0

    def _instrument(self, func, symbol: str, before: bool, ret, *args) -> int:
        if before:
            self._start = time.perf_counter()
            return 0
        elapsed = (time.perf_counter() - self._start) * 1e3
        if self._position == len(self.sites):
            sizes = tuple(int(np.prod(a.shape)) for a in args if hasattr(a, "shape"))
            self.sites.append(
                CallSite(
                    name=str(symbol),
                    kind=kind_of(str(symbol)),
                    output_size=sizes[-1] if sizes else 0,
                    argument_sizes=sizes,
                )
            )
        self.sites[self._position].times.append(elapsed)
        self._position += 1
        return 0


def onnxruntime_sites(profile: Path, warmup: int) -> List[CallSite]:
    """The per-node kernel times of an onnxruntime profile, in execution order."""
    events = json.loads(profile.read_text())
    sites: Dict[str, CallSite] = {}
    runs: Dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        runs[node] += 1
        if runs[node] <= warmup:
            continue
        if node not in sites:
            arguments = event["args"]
            shapes = [next(iter(s.values())) for s in arguments.get("input_type_shape", [])]
            output = next(iter(arguments["output_type_shape"][0].values()))
            op = arguments["op_name"]
            kind, conv = kind_of(op), None
            if "conv" in op.lower() and len(shapes) >= 2 and len(shapes[1]) == 4:
                cout, cin_group, kh, kw = shapes[1]
                conv = (cout, cin_group, kh, kw, output[2], output[3], shapes[0][1] // cin_group)
                if cin_group == kh == kw == 1:  # a BatchNorm run as a per-channel 1x1 conv
                    kind, conv = "elementwise", None
            sites[node] = CallSite(
                name=node,
                kind=kind,
                output_size=int(np.prod(output)),
                argument_sizes=tuple(int(np.prod(s)) for s in shapes),
                conv=conv,
            )
        sites[node].times.append(event["dur"] / 1e3)
    return list(sites.values())


def pair_convs(
    ort: Sequence[CallSite], tvm: Sequence[CallSite]
) -> List[Tuple[CallSite, Optional[CallSite]]]:
    """Pair each onnxruntime conv with the first unpaired TVM conv computing the same output.

    Same output size, and the onnxruntime weight's size among the TVM kernel's arguments (a
    channel-padded TVM weight does not match: that conv is reported unpaired).
    """
    free = [site for site in tvm if site.kind == "conv"]
    pairs = []
    for site in (s for s in ort if s.conv is not None):
        weight = site.argument_sizes[1]
        match = next(
            (
                candidate
                for candidate in free
                if candidate.output_size == site.output_size
                and weight in candidate.argument_sizes[:-1]
            ),
            None,
        )
        if match is not None:
            free.remove(match)
        pairs.append((site, match))
    return pairs


def bottleneck_stack(pairs: int):
    """``(model, example)``: ``pairs`` 1×1 bottleneck pairs of ResNet-50's third stage.

    Each pair is 1024 → 256 (ReLU) → 1024 (+ the pair's input, ReLU) at 14×14, the shapes
    whose convs lag onnxruntime's in ResNet-50. Every pair has weights of its own (2 MB), so
    a stack of twelve streams 24 MB of weights per run, as the model does; two pairs keep
    theirs in cache. Comparing the two tells what waiting for weights costs each runtime.
    """
    import torch
    from torch import nn

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.reduce = nn.Conv2d(1024, 256, 1)
            self.expand = nn.Conv2d(256, 1024, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.expand(torch.relu(self.reduce(x))) + x)

    torch.manual_seed(0)
    model = nn.Sequential(*[Pair() for _ in range(pairs)]).eval()
    return model, torch.randn(1, 1024, 14, 14)


def compare_family(family: str, runs: int, threads: int) -> dict:
    """Time one family's original build and onnxruntime session, kernel by kernel.

    ``bottleneck<N>`` names :func:`bottleneck_stack` of ``N`` pairs. TVM's thread count is set
    by ``main`` before TVM is imported; ``threads`` is onnxruntime's.
    """
    import torch

    if family.startswith("bottleneck"):
        model, example = bottleneck_stack(int(family[len("bottleneck") :]))
        return compare_model(family, model, example, runs, threads)
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return compare_model(family, create(family)[0], example, runs, threads)


def compare_model(name: str, model, example, runs: int, threads: int, warmup: int = 3) -> dict:
    """:func:`compare_family` of any ``nn.Module`` in inference mode on ``example``."""
    import onnxruntime
    import torch
    import tvm

    from tvm_structconv.build import compile_model
    from tvm_structconv.frontend import load_model
    from tvm_structconv.manifest import Manifest
    from tvm_structconv.zoo import export_model

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as scratch:
        path = export_model(model, example, Manifest({}), Path(scratch), name, "torchscript")
        compiled = compile_model(load_model(path), "x86", structured=False, tuning_logs=False)
        instrumented, plain = compiled.load(), compiled.load()
        data = tvm.runtime.tensor(example.numpy(), compiled.device())
        timer = TVMKernelTimer(instrumented)
        sessions = []
        for profiling in (True, False):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # spinning workers would take the cores from TVM's runs in between (one process)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.enable_profiling = profiling
            if profiling:
                options.profile_file_prefix = str(Path(scratch) / "ort")
            sessions.append(
                onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            )
        feeds = {sessions[0].get_inputs()[0].name: example.numpy()}
        end_to_end: Dict[str, List[float]] = {"tvm": [], "onnxruntime": []}
        for index in range(warmup + runs):
            timer.start_run()
            instrumented["main"](data)
            sessions[0].run(None, feeds)
            for runtime, call in (
                ("tvm", lambda: plain["main"](data)),
                ("onnxruntime", lambda: sessions[1].run(None, feeds)),
            ):
                start = time.perf_counter()
                call()
                if index >= warmup:
                    end_to_end[runtime].append((time.perf_counter() - start) * 1e3)
        for site in timer.sites:
            del site.times[:warmup]
        ort = onnxruntime_sites(Path(sessions[0].end_profiling()), warmup)
    return summarise(name, timer.sites, ort, end_to_end)


def summarise(
    family: str,
    tvm: Sequence[CallSite],
    ort: Sequence[CallSite],
    end_to_end: Dict[str, List[float]],
) -> dict:
    """Minima by kind, end to end, and the paired convs grouped by shape."""
    by_kind: Dict[str, Dict[str, float]] = defaultdict(lambda: {"tvm": 0.0, "onnxruntime": 0.0})
    for runtime, sites in (("tvm", tvm), ("onnxruntime", ort)):
        for site in sites:
            by_kind[site.kind][runtime] += site.best
    groups: Dict[Tuple[int, ...], Dict[str, float]] = defaultdict(
        lambda: {"count": 0, "tvm": 0.0, "onnxruntime": 0.0}
    )
    unpaired = 0
    for site, match in pair_convs(ort, tvm):
        if match is None:
            unpaired += 1
            continue
        group = groups[site.conv]
        group["count"] += 1
        group["tvm"] += match.best
        group["onnxruntime"] += site.best
    return {
        "family": family,
        "end_to_end_min_ms": {name: min(values) for name, values in end_to_end.items()},
        "kernels_ms": {
            "tvm": sum(site.best for site in tvm),
            "onnxruntime": sum(site.best for site in ort),
        },
        "by_kind_ms": dict(by_kind),
        "convs": [
            {"shape": list(shape), **values}
            for shape, values in sorted(groups.items(), key=lambda item: -item[1]["tvm"])
        ],
        "unpaired_convs": unpaired,
        "calls": {"tvm": len(tvm), "onnxruntime": len(ort)},
        "sites": {
            runtime: [[site.name, site.kind, site.best] for site in sites]
            for runtime, sites in (("tvm", tvm), ("onnxruntime", ort))
        },
    }


def report(row: dict) -> str:
    """Markdown for one family: totals, kinds, then the convs (slowest on TVM first)."""
    end, kernels = row["end_to_end_min_ms"], row["kernels_ms"]
    lines = [
        f"### {row['family']}",
        "",
        "| | TVM original ms | onnxruntime ms | ORT / TVM |",
        "|---|---|---|---|",
        f"| end to end (uninstrumented) | {end['tvm']:.2f} | {end['onnxruntime']:.2f} "
        f"| {end['onnxruntime'] / end['tvm']:.2f}x |",
        f"| sum of kernels ({row['calls']['tvm']} / {row['calls']['onnxruntime']} calls) "
        f"| {kernels['tvm']:.2f} | {kernels['onnxruntime']:.2f} "
        f"| {kernels['onnxruntime'] / kernels['tvm']:.2f}x |",
    ]
    for kind, values in sorted(row["by_kind_ms"].items(), key=lambda item: -item[1]["tvm"]):
        ratio = values["onnxruntime"] / values["tvm"] if values["tvm"] else float("nan")
        lines.append(
            f"| {kind} | {values['tvm']:.3f} | {values['onnxruntime']:.3f} | {ratio:.2f}x |"
        )
    lines += [
        "",
        "| conv (Cout, Cin/g, kh, kw, H, W, groups) | calls | TVM ms | onnxruntime ms "
        "| ORT / TVM |",
        "|---|---|---|---|---|",
    ]
    for conv in row["convs"]:
        lines.append(
            f"| {tuple(conv['shape'])} | {conv['count']} | {conv['tvm']:.3f} "
            f"| {conv['onnxruntime']:.3f} | {conv['onnxruntime'] / conv['tvm']:.2f}x |"
        )
    if row["unpaired_convs"]:
        lines.append(f"\n{row['unpaired_convs']} onnxruntime convs had no TVM kernel paired.")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Compare the families kernel by kernel and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="googlenet,squeezenet1_1,resnet50")
    parser.add_argument("--runs", type=int, default=40, help="runs of each runtime")
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes")
    parser.add_argument("--out", default=None, help="output stem")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool

    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    stem = f"kernel_compare-{cpu}" + (f"-{args.threads}threads" if args.threads > 1 else "")
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / stem
    out.parent.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    rows = []
    for family in args.families.split(","):
        print(f"[{family}] exporting, compiling, timing ...", file=sys.stderr, flush=True)
        rows.append(compare_family(family, args.runs, args.threads))
        print(report(rows[-1]), flush=True)
    header = (
        f"Kernel by kernel, {time.strftime('%Y-%m-%d %H:%M')}, host CPU {cpu}: the original "
        f"build (TVM, hand schedules) against onnxruntime, {args.threads} thread(s), batch 1, "
        f"fp32, 224x224 (bottleneck<N>: 1024x14x14), random weights; the two alternate run by "
        f"run, {args.runs} runs"
        f"{' (onnxruntime workers not spinning between its runs)' if args.threads > 1 else ''}; "
        f"every number is a sum of per-call minima in ms; load average at start {load}. "
        "Above 1: TVM faster.\n\n"
    )
    out.with_suffix(".md").write_text(header + "\n".join(report(row) for row in rows))
    out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
