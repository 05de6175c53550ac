"""Speed on real models: the project's original and structured builds against onnxruntime.

For each family of :data:`tvm_structconv.zoo.FAMILIES` named (default: those the "fast on
every model" issue measured), torchvision's or timm's own definition with random weights is
``structurize``d with the family's plan (or ``--plan``), exported to ONNX (TorchScript
exporter, manifest in the metadata) and measured with ``structconv bench``'s machinery
(:func:`tvm_structconv.benchmark.run_benchmark`): TVM original and structured (hand schedules,
plus the tuning log of this CPU if there is one), onnxruntime on the original model and on the
structured one written as plain AveragePool + small Conv. Every runtime is timed in its own
process, rounds interleaved, so the ratios of one run are comparable.

    python benchmarks/zoo_speed.py                                   # 8 families, 224 px
    python benchmarks/zoo_speed.py --families convnext_tiny,resnet50 --plan "3x3:n=2,c=C"

Prints, per family, ``ORT original ms / TVM original ms`` (at least 1: the original build is as
fast as onnxruntime) and ``ORT original ms / TVM structured ms`` (the structured lead), and
writes them with every raw sample to ``benchmarks/results/zoo_speed-<cpu>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_FAMILIES = (
    "convnext_tiny,repvgg,mobilenet_v2,googlenet,resnet50,squeezenet1_1,densenet121,resnext50"
)


def _median(report, runtime: str, variant: str):
    row = report.row("x86", runtime, variant)
    return row.latency.median_ms if row is not None and row.latency is not None else None


def _ratio(numerator, denominator) -> str:
    if numerator is None or denominator is None:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=DEFAULT_FAMILIES, help="comma-separated")
    parser.add_argument("--plan", default=None, help="structure plan (default: the family's)")
    parser.add_argument("--size", type=int, default=224, help="input side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10, help="samples per round")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--out", default=None, help="output stem")
    args = parser.parse_args()

    import torch
    import tvm

    from tvm_structconv.benchmark import run_benchmark
    from tvm_structconv.nn import structurize
    from tvm_structconv.plan import Plan
    from tvm_structconv.zoo import FAMILIES, create, export_model

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    results_dir = Path(__file__).resolve().parent / "results"
    out = Path(args.out) if args.out else results_dir / f"zoo_speed-{cpu}"
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "| family | plan | TVM original ms | ORT original ms | ORT / TVM original | "
        "TVM structured ms | ORT structured (unfused) ms | ORT original / TVM structured |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines, records = [header], []
    for family in args.families.split(","):
        plan = args.plan or FAMILIES[family].plan
        side = max(args.size, FAMILIES[family].min_size)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            model, manifest = structurize(create(family, 0), Plan.parse(plan))
            example = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
            path = export_model(
                model, example, manifest, Path(scratch), f"{family}-{side}", "torchscript"
            )
            report = run_benchmark(
                str(path),
                peers=["onnxruntime"],
                threads=args.threads,
                repeat=args.repeat,
                rounds=args.rounds,
                workdir=scratch,
                progress=lambda message: print(f"[{family}] {message}", file=sys.stderr),
            )
        tvm_original = _median(report, "tvm", "original")
        tvm_structured = _median(report, "tvm", "structured")
        ort_original = _median(report, "onnxruntime", "original")
        ort_structured = _median(report, "onnxruntime", "structured")

        def ms(value):
            return f"{value:.2f}" if value is not None else "n/a"

        line = (
            f"| {family} | `{plan}` | {ms(tvm_original)} | {ms(ort_original)} | "
            f"{_ratio(ort_original, tvm_original)} | {ms(tvm_structured)} | "
            f"{ms(ort_structured)} | {_ratio(ort_original, tvm_structured)} |"
        )
        print(line, flush=True)
        lines.append(line)
        records.append(
            {
                "family": family,
                "plan": plan,
                "seconds": time.perf_counter() - start,
                "report": report.to_json(),
            }
        )
    threads = records[0]["report"]["threads"] if records else args.threads
    text = (
        f"Speed on real models, {time.strftime('%Y-%m-%d')}, host CPU {cpu}, "
        f"batch 1, fp32, {args.size}x{args.size}, {threads} threads, {args.rounds} rounds of "
        f"{args.repeat} samples, medians; random weights. Ratios above 1: ours is faster.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(records, indent=1))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
