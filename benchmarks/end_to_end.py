"""End-to-end latency of the built-in models on this machine: ``structconv bench`` over each.

For every model: TVM original vs structured (hand schedules, untuned; the original build runs
every conv on the same fused template with the trivial structure, so the comparison is at equal
schedule effort), and the peers on this host — onnxruntime, torch eager and ``torch.compile`` —
on the original model and, as plain unfused ops, on the structured one. Every runtime is timed
in its own process (a runtime's idle worker threads slow the next one timed in the same
process), rounds interleaved.

    python benchmarks/end_to_end.py                         # resnet18
    python benchmarks/end_to_end.py --models resnet18,mobilenet_v2 --rounds 3

Writes ``benchmarks/results/<date>-<cpu>-<model>.{json,md,png}``: every raw sample, the table
and the plot.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

import tvm

from tvm_structconv.benchmark import run_benchmark

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main() -> int:
    """Run the benchmark for each model and record it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18", help="comma-separated built-in models")
    parser.add_argument("--peers", default="onnxruntime,torch,inductor")
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--repeat", type=int, default=10, help="samples per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stem = f"{datetime.date.today().isoformat()}-{tvm.target.codegen.llvm_get_system_cpu()}"
    for model in args.models.split(","):
        report = run_benchmark(
            model,
            peers=[p for p in args.peers.split(",") if p],
            threads=args.threads,
            repeat=args.repeat,
            rounds=args.rounds,
            image_size=args.image_size,
            progress=lambda message: print(f"[{model}] {message}", file=sys.stderr, flush=True),
        )
        table = report.format()
        print(table)
        base = RESULTS / f"{stem}-{model}"
        report.save_json(f"{base}.json")
        report.plot(f"{base}.png")
        base.with_suffix(".md").write_text(f"```\n{table}\n```\n\n![{model}]({base.name}.png)\n")
        print(f"wrote {base}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
