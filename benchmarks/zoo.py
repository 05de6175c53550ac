"""Coverage of real model families: torchvision's and timm's classifiers through the compiler.

For every family of :data:`tvm_structconv.zoo.FAMILIES` (or those named), every export path
(TorchScript ONNX, dynamo ONNX, ``.pt2``) and both variants (original, ``structurize``d with
``3x3:n=2,c=C``): export, import, compile for x86 and check against onnxruntime / torch; and
compile (and cross-link, when ``aarch64-linux-gnu-g++`` is installed) for aarch64. Each check
runs in its own process, so one model's crash or memory cannot take the others down.

    python benchmarks/zoo.py                       # everything, 224x224 (long: ~1 h on 2 cores)
    python benchmarks/zoo.py --families mobilenet_v3_small,ghostnet --size 96 --exporters pt2

Writes ``benchmarks/results/zoo-<cpu>.{md,json}`` (``--out`` moves them): the coverage table of
the README.

With ``--time`` it measures speed instead (default families: those the speed issue measured,
224 px): each family ``structurize``d with its speed plan (or ``--plan``), exported to ONNX and
``.pt2``, and timed with ``structconv bench``'s machinery: the project's original and
structured builds, onnxruntime on the original model and on the structured one written as
plain AveragePool + small Conv, and ``torch.compile`` on the original; every runtime in its
own process, rounds interleaved, so the ratios of one run are comparable. Writes
``benchmarks/results/zoo-time-<cpu>.{md,json,png}``.

    python benchmarks/zoo.py --time --families convnext_tiny,resnet50 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

from tvm_structconv.zoo import EXPORTERS, FAMILIES, ZooResult, check, coverage_table


def _check_in_child(queue, kwargs) -> None:
    queue.put([dataclasses.asdict(result) for result in check(**kwargs)])


def run_isolated(timeout: float = 3600, **kwargs) -> List[ZooResult]:
    """:func:`check` in a fresh process; a crash of that process fails every build."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_check_in_child, args=(queue, kwargs))
    process.start()
    try:
        found = queue.get(timeout=timeout)
    except Exception:  # noqa: BLE001 - the child died or hung
        process.kill()
        found = None
    process.join()
    if found is None:
        shape = (kwargs["batch"], 3, *kwargs["image_size"])
        return [
            ZooResult(
                kwargs["name"],
                kwargs["exporter"],
                target,
                structured,
                shape,
                stage="crashed",
                error=f"the checking process exited with code {process.exitcode}",
            )
            for target, structured in kwargs["builds"]
        ]
    return [
        ZooResult(**{**fields, "input_shape": tuple(fields["input_shape"])}) for fields in found
    ]


TIMED_FAMILIES = (
    "convnext_tiny,repvgg,mobilenet_v2,googlenet,resnet50,squeezenet1_1,densenet121,resnext50"
)


def _median(report, target: str, runtime: str, variant: str) -> Optional[float]:
    row = report.row(target, runtime, variant)
    return row.latency.median_ms if row is not None and row.latency is not None else None


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    if numerator is None or denominator is None:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def _ms(value: Optional[float]) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def time_family(family: str, plan: str, side: int, args, folder: Path) -> dict:
    """Export ``family`` (ONNX and ``.pt2``) and time every runtime on it; one table row."""
    import torch

    from tvm_structconv.benchmark import ModelSource, run_benchmark
    from tvm_structconv.nn import structurize
    from tvm_structconv.plan import Plan
    from tvm_structconv.zoo import create, export_model

    model, manifest = structurize(create(family, 0), Plan.parse(plan))
    example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    stem = f"{family}-{side}"
    source = ModelSource(
        onnx=str(export_model(model, example, manifest, folder, stem, "torchscript")),
        pt2=str(export_model(model, example, manifest, folder, stem, "pt2")),
    )
    report = run_benchmark(
        source,
        peers=["onnxruntime", "inductor"],
        threads=args.threads,
        repeat=args.repeat,
        rounds=args.rounds,
        workdir=str(folder),
        progress=lambda message: print(f"[{family}] {message}", file=sys.stderr, flush=True),
    )
    original, structured = (report.row("x86", "tvm", v) for v in ("original", "structured"))
    return {
        "family": family,
        "plan": plan,
        "size": side,
        "mac_ratio": original.macs / structured.macs if structured.macs else None,
        "tvm_original_ms": _median(report, "x86", "tvm", "original"),
        "tvm_structured_ms": _median(report, "x86", "tvm", "structured"),
        "ort_original_ms": _median(report, "host", "onnxruntime", "original"),
        "ort_structured_ms": _median(report, "host", "onnxruntime", "structured"),
        "inductor_original_ms": _median(report, "host", "inductor", "original"),
        "report": report.to_json(),
    }


def timing_table(rows: List[dict]) -> str:
    """The README's speed table: latencies and the ratios of one run."""
    lines = [
        "| family | TVM original ms | ORT ms | torch.compile ms | ORT / TVM original | "
        "TVM structured ms | ORT structured (unfused) ms | TVM original / structured "
        "(MAC ratio) | ORT / TVM structured | load after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mac_ratio = f"{row['mac_ratio']:.2f}" if row.get("mac_ratio") else "n/a"
        lines.append(
            f"| {row['family']} | {_ms(row['tvm_original_ms'])} | {_ms(row['ort_original_ms'])} "
            f"| {_ms(row['inductor_original_ms'])} "
            f"| {_ratio(row['ort_original_ms'], row['tvm_original_ms'])} "
            f"| {_ms(row['tvm_structured_ms'])} | {_ms(row['ort_structured_ms'])} "
            f"| {_ratio(row['tvm_original_ms'], row['tvm_structured_ms'])} ({mac_ratio}) "
            f"| {_ratio(row['ort_original_ms'], row['tvm_structured_ms'])} "
            f"| {row['load_at_end'][0] if row.get('load_at_end') else 'n/a'} |"
        )
    return "\n".join(lines)


def plot_timing(rows: List[dict], path: Path) -> None:
    """Bars per family: onnxruntime's latency over ours (original, structured); 1 is parity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.0))
    width = 0.38
    for offset, key, label, color in (
        (-width / 2, "tvm_original_ms", "TVM original", "#8c8c8c"),
        (width / 2, "tvm_structured_ms", "TVM structured", "#1f77b4"),
    ):
        values = [
            row["ort_original_ms"] / row[key] if row[key] and row["ort_original_ms"] else 0.0
            for row in rows
        ]
        axes.bar([i + offset for i in range(len(rows))], values, width, label=label, color=color)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([row["family"] for row in rows], rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("onnxruntime ms / ours (higher: ours faster)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def main_time(args) -> int:
    """``--time``: speed of each family against onnxruntime and torch.compile."""
    import tempfile

    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"zoo-time-{cpu}"
    out.parent.mkdir(parents=True, exist_ok=True)
    side = int(args.size)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    rows = []
    for family in (args.families or TIMED_FAMILIES).split(","):
        with tempfile.TemporaryDirectory() as scratch:
            row = time_family(
                family,
                args.plan or FAMILIES[family].speed_plan,
                max(side, FAMILIES[family].min_size),
                args,
                Path(scratch),
            )
        row["load_at_end"] = [round(value, 1) for value in os.getloadavg()]
        rows.append(row)
        print(timing_table([row]).splitlines()[-1], flush=True)
    threads = rows[0]["report"]["threads"] if rows else args.threads
    header = (
        f"Speed on real models, {time.strftime('%Y-%m-%d')}, host CPU {cpu}: batch 1, fp32, "
        f"{side}x{side}, {threads} threads, {args.rounds} interleaved rounds of {args.repeat} "
        "samples, medians; random weights; structured with "
        f"{args.plan or 'each family speed plan (tvm_structconv.zoo.FAMILIES)'}; load average "
        f"at start {load} (other work on the machine makes 2-thread medians meaningless: "
        "benchmarks/single_thread.py tolerates it). Ratios above 1: ours faster.\n\n"
    )
    out.with_suffix(".md").write_text(
        header + timing_table(rows) + f"\n\n![speed]({out.name}.png)\n"
    )
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    plot_timing(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')}, .json, .png")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=None, help="comma-separated (default: all)")
    parser.add_argument("--exporters", default=",".join(EXPORTERS), help="comma-separated")
    parser.add_argument("--targets", default="x86,aarch64", help="comma-separated")
    parser.add_argument("--variants", default="original,structured", help="comma-separated")
    parser.add_argument("--size", default="224", help="input side, or HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--out", default=None, help="output stem (default benchmarks/results/zoo-<cpu>)"
    )
    parser.add_argument("--time", action="store_true", help="measure speed instead of coverage")
    parser.add_argument("--plan", default=None, help="--time: plan (default: each family's)")
    parser.add_argument("--rounds", type=int, default=2, help="--time: interleaved rounds")
    parser.add_argument("--repeat", type=int, default=10, help="--time: samples per round")
    parser.add_argument("--threads", type=int, default=None, help="--time: default all cores")
    args = parser.parse_args()
    unknown = [name for name in (args.families or "").split(",") if name and name not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    if args.time:
        return main_time(args)
    args.families = args.families or ",".join(FAMILIES)

    import tvm

    height, _, width = args.size.partition("x")
    size = (int(height), int(width or height))
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"zoo-{cpu}"
    out.parent.mkdir(parents=True, exist_ok=True)
    cross = shutil.which("aarch64-linux-gnu-g++") is not None
    builds = [
        (target, variant == "structured")
        for target in args.targets.split(",")
        for variant in args.variants.split(",")
    ]
    results = []
    for family in args.families.split(","):
        side = (max(size[0], FAMILIES[family].min_size), max(size[1], FAMILIES[family].min_size))
        for exporter in args.exporters.split(","):
            found = run_isolated(
                name=family,
                exporter=exporter,
                builds=builds,
                image_size=side,
                batch=args.batch,
                link=cross,
            )
            for result in found:
                error = f"{result.max_rel_error:.1e}" if result.max_rel_error is not None else "-"
                variant = "structured" if result.structured else "original"
                print(
                    f"{family:<20} {exporter:<12} {variant:<10} {result.target:<8} "
                    f"{'ok' if result.ok else 'FAIL ' + result.stage:<14} err {error:<8} "
                    f"compile {result.seconds.get('compile', float('nan')):6.1f} s"
                    f"{'  ' + result.error if result.error else ''}",
                    flush=True,
                )
            results.extend(found)
    header = (
        f"Zoo coverage, {time.strftime('%Y-%m-%d')}, host CPU {cpu}, input "
        f"{args.batch}x3x{size[0]}x{size[1]} (Inception-v3 at least 75), random weights; "
        f"aarch64 builds {'cross-linked' if cross else 'compiled only (no cross compiler)'}"
        "; errors are relative to the output's largest magnitude, against onnxruntime "
        "(ONNX) or torch (.pt2).\n\n"
    )
    out.with_suffix(".md").write_text(header + coverage_table(results) + "\n")
    out.with_suffix(".json").write_text(
        json.dumps([dataclasses.asdict(r) for r in results], indent=1)
    )
    failed = [r for r in results if not r.ok]
    print(
        f"{len(results) - len(failed)} passed, {len(failed)} failed; table: "
        f"{out.with_suffix('.md')}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
