"""One-thread latency of the model-zoo families: TVM original / structured vs onnxruntime.

A benchmark that stays meaningful on a shared machine: everything runs in one process on one
thread, the runtimes alternate call by call (TVM original, TVM structured, onnxruntime, ...),
and each is summarised by its minimum over the calls (the run least disturbed by other work)
as well as its median. The ratios compare minima of the same run. What it cannot show is
multi-thread scaling: ``benchmarks/zoo.py --time`` measures that (2 threads, each runtime in
its own process), and needs a quiet machine.

Each family (torchvision / timm definition, random weights, 224×224) is exported to ONNX once
as it is and once ``structurize``d with its speed plan (``tvm_structconv.zoo.FAMILIES``); a
name that is not a family is a built-in model (``structconv models``) with the default plan.
onnxruntime runs the original model and, as plain unfused ops (AveragePool + small Conv,
:mod:`tvm_structconv.onnx_structured`), the structured one.

    python benchmarks/single_thread.py                       # the eight families of the speed table
    python benchmarks/single_thread.py --families resnet50 --calls 50
    python benchmarks/single_thread.py --families resnet18,resnet50   # built-in models too

Writes ``benchmarks/results/single_thread-<cpu>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM starts its thread pool

import numpy as np  # noqa: E402

from tvm_structconv.timing import interleaved_samples  # noqa: E402  (imports no TVM)

FAMILIES = (
    "convnext_tiny",
    "repvgg",
    "mobilenet_v2",
    "googlenet",
    "resnet50",
    "squeezenet1_1",
    "densenet121",
    "resnext50",
)
RUNTIMES = ("tvm_original", "tvm_structured", "onnxruntime", "onnxruntime_structured")


def create(name: str):
    """``(model, speed plan)``: a model-zoo family (random weights) or a built-in model."""
    from tvm_structconv.models import DEFAULT_PLAN, create_model
    from tvm_structconv.zoo import FAMILIES as ZOO
    from tvm_structconv.zoo import create as create_family

    if name in ZOO:
        return create_family(name, 0), ZOO[name].speed_plan
    return create_model(name).eval(), DEFAULT_PLAN


def runners(family: str, folder: Path) -> Dict[str, Callable[[], object]]:
    """One zero-argument callable per runtime, on the same random 224×224 input."""
    import torch
    import tvm

    from tvm_structconv.build import compile_model
    from tvm_structconv.frontend import load_model
    from tvm_structconv.manifest import Manifest
    from tvm_structconv.models import model_cost
    from tvm_structconv.nn import structurize
    from tvm_structconv.peers import PeerUnavailable, onnxruntime_runner
    from tvm_structconv.plan import Plan
    from tvm_structconv.zoo import export_model

    torch.set_num_threads(1)
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model, plan = create(family)
    original = export_model(model, example, Manifest({}), folder, family, "torchscript")
    structured_model, manifest = structurize(model, Plan.parse(plan))
    structured = export_model(
        structured_model, example, manifest, folder, f"{family}-structured", "torchscript"
    )
    x = example.numpy()
    calls = {}
    for name, path, rewrite in (
        ("tvm_original", original, False),
        ("tvm_structured", structured, True),
    ):
        compiled = compile_model(load_model(path), "x86", structured=rewrite, tuning_logs=False)
        main = compiled.load()["main"]
        data = tvm.runtime.tensor(x, compiled.device())
        calls[name] = lambda main=main, data=data: main(data)
    calls["onnxruntime"] = onnxruntime_runner(str(original), [x], 1, structured=False)
    try:
        calls["onnxruntime_structured"] = onnxruntime_runner(
            str(structured), [x], 1, structured=True
        )
    except PeerUnavailable as reason:  # e.g. structured Linear layers: no unfused ONNX form
        print(f"[{family}] onnxruntime structured: {reason}", file=sys.stderr, flush=True)
    cost = model_cost(model, manifest.structures(model), tuple(example.shape))
    calls["mac_ratio"] = cost.mac_ratio
    return calls


def time_family(family: str, calls: int, warmup: int = 3) -> dict:
    """Alternate the runtimes ``calls`` times; minimum and median ms of each, and the ratios."""
    with tempfile.TemporaryDirectory() as scratch:
        run = runners(family, Path(scratch))
        mac_ratio = run.pop("mac_ratio")
        samples = interleaved_samples(run, calls, warmup)
    best = {name: min(values) for name, values in samples.items()}
    return {
        "family": family,
        "mac_ratio": mac_ratio,
        "min_ms": best,
        "median_ms": {name: float(np.median(values)) for name, values in samples.items()},
        "ort_over_tvm_original": best["onnxruntime"] / best["tvm_original"],
        "original_over_structured": best["tvm_original"] / best["tvm_structured"],
        "ort_over_tvm_structured": best["onnxruntime"] / best["tvm_structured"],
        "ort_unfused_over_tvm_structured": (
            best["onnxruntime_structured"] / best["tvm_structured"]
            if "onnxruntime_structured" in best
            else None
        ),
    }


def table(rows: List[dict]) -> str:
    """Markdown: minima (medians) in ms and the ratios of minima; above 1: ours faster."""
    lines = [
        "| family | TVM original ms | onnxruntime ms | ORT / TVM original | TVM structured ms "
        "| TVM original / structured (MAC ratio) | ORT / TVM structured "
        "| ORT unfused structured ms | ORT unfused structured / TVM structured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        best, median = row["min_ms"], row["median_ms"]
        lines.append(
            f"| {row['family']} | {best['tvm_original']:.2f} ({median['tvm_original']:.2f}) "
            f"| {best['onnxruntime']:.2f} ({median['onnxruntime']:.2f}) "
            f"| {row['ort_over_tvm_original']:.2f}x "
            f"| {best['tvm_structured']:.2f} ({median['tvm_structured']:.2f}) "
            f"| {row['original_over_structured']:.2f}x ({row['mac_ratio']:.2f}) "
            f"| {row['ort_over_tvm_structured']:.2f}x "
            + (
                f"| {best['onnxruntime_structured']:.2f} ({median['onnxruntime_structured']:.2f}) "
                f"| {row['ort_unfused_over_tvm_structured']:.2f}x |"
                if row["ort_unfused_over_tvm_structured"] is not None
                else "| n/a | n/a |"
            )
        )
    return "\n".join(lines)


def main() -> int:
    """Time the families and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument("--calls", type=int, default=30, help="calls of each runtime")
    parser.add_argument("--out", default=None, help="output stem")
    args = parser.parse_args()

    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"single_thread-{cpu}"
    out.parent.mkdir(parents=True, exist_ok=True)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    rows = []
    for family in args.families.split(","):
        print(f"[{family}] exporting, compiling, timing ...", file=sys.stderr, flush=True)
        rows.append(time_family(family, args.calls))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    header = (
        f"One-thread latency, {time.strftime('%Y-%m-%d %H:%M')}, host CPU {cpu}: batch 1, fp32, "
        f"224x224, random weights, structured with each family's speed plan; one process, the "
        f"runtimes alternating call by call, {args.calls} calls each; minimum ms (median) and "
        f"ratios of minima; load average at start {load}. Ratios above 1: ours faster.\n\n"
    )
    out.with_suffix(".md").write_text(header + table(rows) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
