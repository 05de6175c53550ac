"""How much a multi-thread latency moves from one process to the next, for TVM and onnxruntime.

``zoo.py --time`` times each runtime in a fresh process per round; on a small shared machine
the medians of two such runs can differ by more than the gap being measured. This script
isolates that: for each family it builds the original model once (TVM library and ONNX), then
starts ``--processes`` fresh worker processes per runtime, alternating TVM and onnxruntime,
each timing ``--repeat`` samples at ``--threads`` threads, and records per process the median,
minimum and maximum, the share of CPU time the hypervisor stole (``/proc/stat``) and the load.
The spread of the per-process medians is what a two-round table can move by.

    python benchmarks/process_spread.py --families repvgg,mobilenet_v2 --processes 5

Writes ``benchmarks/results/process_spread-<cpu>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_times() -> List[int]:
    """``/proc/stat``'s first line: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1:]]


def _build(family: str, folder: Path) -> Dict[str, str]:
    """The original model of ``family`` as an ONNX file and an exported TVM library."""
    import torch

    from tvm_structconv.build import compile_model
    from tvm_structconv.frontend import load_model
    from tvm_structconv.manifest import Manifest
    from tvm_structconv.zoo import create, export_model

    model = create(family, 0).eval()
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    onnx = export_model(model, example, Manifest.from_structures({}), folder, family, "torchscript")
    library = folder / f"{family}.so"
    compile_model(load_model(str(onnx)), "x86", structured=False).export(str(library))
    return {"onnx": str(onnx), "library": str(library)}


def _one_process(job) -> Dict[str, float]:
    """Run ``job`` in a fresh worker; its sample statistics and the CPU time stolen meanwhile."""
    from tvm_structconv.timing import measure_isolated

    before = _cpu_times()
    latency, reason = measure_isolated(job)
    after = _cpu_times()
    if latency is None:
        raise RuntimeError(f"{job.runtime} failed: {reason}")
    spent = [b - a for a, b in zip(before, after)]
    return {
        "median_ms": latency.median_ms,
        "min_ms": float(min(latency.samples_ms)),
        "max_ms": float(max(latency.samples_ms)),
        "steal_percent": 100.0 * spent[7] / max(sum(spent), 1),
        "load": os.getloadavg()[0],
    }


def markdown(rows: List[dict], header: Dict[str, str]) -> str:
    """Per family and runtime: the per-process medians and their spread."""
    lines = ["# Process-to-process spread of multi-thread latency", ""]
    lines += [f"* {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| family | runtime | per-process medians ms | spread (max / min) | steal % | load |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        medians = [p["median_ms"] for p in row["processes"]]
        steal = max(p["steal_percent"] for p in row["processes"])
        loads = [p["load"] for p in row["processes"]]
        lines.append(
            f"| {row['family']} | {row['runtime']} | {', '.join(f'{m:.2f}' for m in medians)} "
            f"| {max(medians) / min(medians):.2f} | ≤ {steal:.1f} | "
            f"{min(loads):.1f}–{max(loads):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="repvgg,mobilenet_v2")
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per runtime")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10, help="samples per process")
    parser.add_argument("--out", default=None, help="output stem")
    args = parser.parse_args(argv)
    from tvm_structconv.zoo import FAMILIES

    unknown = [name for name in args.families.split(",") if name not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)} (known: {', '.join(FAMILIES)})")

    import tvm

    from tvm_structconv.timing import Job, save_inputs

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    out = Path(args.out) if args.out else RESULTS / f"process_spread-{cpu}"
    header = {
        "cpu": cpu,
        "threads": str(args.threads),
        "processes": f"{args.processes} per runtime, TVM and onnxruntime alternating",
        "samples": f"{args.repeat} per process, each the mean of runs filling 100 ms",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
        inputs = save_inputs(str(folder / "inputs.npz"), [x])
        for family in args.families.split(","):
            files = _build(family, folder)
            jobs = {
                runtime: Job(
                    runtime=runtime,
                    variant="original",
                    inputs_path=inputs,
                    threads=args.threads,
                    repeat=args.repeat,
                    library=files["library"],
                    onnx=files["onnx"],
                )
                for runtime in ("tvm", "onnxruntime")
            }
            found = {runtime: [] for runtime in jobs}
            for index in range(args.processes):
                for runtime, job in jobs.items():
                    found[runtime].append(_one_process(job))
                    print(f"[{family}] {runtime} #{index}: {found[runtime][-1]}", flush=True)
            rows += [
                {"family": family, "runtime": runtime, "processes": processes}
                for runtime, processes in found.items()
            ]
    text = markdown(rows, header)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
