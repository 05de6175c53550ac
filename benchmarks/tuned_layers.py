"""Per-layer effect of MetaSchedule tuning: hand schedule vs the tuning log, original vs structured.

Every conv call of a built-in model (ResNet-18 by default) is taken as the fused function the
compiler schedules (conv + bias + ReLU / residual add), from the original and the structured
build alike (:func:`tvm_structconv.tune.conv_tasks` order: the k-th conv call of one build is
the k-th of the other). Each function is compiled twice, with the hand schedule and with the
best record of the target's tuning log (``structconv tune MODEL --original`` gives both builds
the same trial budget), and the four kernels of a layer are timed interleaved in this process
with the target's threads (``time_evaluator``, median of rounds).

    structconv tune out/resnet18.onnx --trials 576 --original    # first
    python benchmarks/tuned_layers.py --rounds 5

Prints a table and writes ``benchmarks/results/tuned_layers-<target key>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
from typing import Dict, List

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fused_conv_calls(imported, structured: bool, target) -> List[tuple]:
    """``(function name, PrimFunc)`` of every conv call of ``main``, in call order."""
    from tvm_structconv.build import prepare_module
    from tvm_structconv.schedules.packing import conv_layout
    from tvm_structconv.tune import conv_calls

    return conv_calls(prepare_module(imported, structured, layout=conv_layout(target)).mod, target)


def build_both(func, target, database):
    """The function compiled with the hand schedule and with the database's best record."""
    import tvm

    from tvm_structconv.transform import ApplySchedules, ApplyTuningDatabase, tuned_functions

    def module() -> tvm.IRModule:  # one per pass: a pass may rewrite a module it alone holds
        return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})

    with target:
        hand = ApplySchedules(target)(module())
        from_log = ApplyTuningDatabase(database)(module())
    if not tuned_functions(from_log):
        return tvm.compile(hand, target=target), None
    return tvm.compile(hand, target=target), tvm.compile(from_log, target=target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--onnx",
        type=pathlib.Path,
        default=None,
        help="the ONNX file that was tuned (default: export the built-in model)",
    )
    parser.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from tvm_structconv.threads import pinned_threads

    # a TVM_NUM_THREADS you set stays; else every core this process may use
    with pinned_threads() as threads:
        measure(args, threads)


def measure(args: argparse.Namespace, threads: int) -> None:
    """Time every conv call hand vs tuned and write the table, with ``threads`` TVM threads."""
    import tvm

    from tvm_structconv.export import export
    from tvm_structconv.frontend import load_model
    from tvm_structconv.models import create_structured
    from tvm_structconv.targets import make_target, target_key
    from tvm_structconv.tuning_logs import load_database, logs_dir

    target = make_target("x86")
    database = load_database(logs_dir(target))
    if database is None:
        sys.exit(f"no tuning log in {logs_dir(target)}: run structconv tune first")
    # through ONNX, as `structconv tune out/<model>.onnx` saw it: an import through
    # torch.export gives other fused functions, which a log tuned on the ONNX model misses
    onnx_path = args.onnx
    if onnx_path is None:
        built = create_structured(args.model, seed=0)
        onnx_path = pathlib.Path(tempfile.mkdtemp()) / f"{args.model}.onnx"
        export(built.model, onnx_path, built.example_input, built.manifest)
    imported = load_model(str(onnx_path))
    calls = {
        variant: fused_conv_calls(imported, variant == "structured", target)
        for variant in ("original", "structured")
    }
    assert len(calls["original"]) == len(calls["structured"])
    device = tvm.cpu()
    rows: List[Dict[str, object]] = []
    cache: Dict[str, tuple] = {}
    for index, (original, structured) in enumerate(zip(calls["original"], calls["structured"])):
        timers = {}
        for variant, (name, func) in (("original", original), ("structured", structured)):
            key = f"{variant}/{name}"
            if key not in cache:
                cache[key] = build_both(func, target, database)
            for schedule, executable in zip(("hand", "tuned"), cache[key]):
                if executable is None:
                    continue
                # a PrimFunc's parameters are its buffers (shape, dtype)
                arrays = [
                    tvm.runtime.tensor(
                        np.random.default_rng(0)
                        .standard_normal([int(d) for d in b.shape])
                        .astype(str(b.dtype)),
                        device,
                    )
                    for b in func.params
                ]
                timers[f"{variant}-{schedule}"] = (
                    executable.mod.time_evaluator(
                        "main", device, number=5, repeat=1, min_repeat_ms=30
                    ),
                    arrays,
                )
        samples: Dict[str, List[float]] = {name: [] for name in timers}
        for _ in range(args.rounds):
            for name, (timer, arrays) in timers.items():
                samples[name].append(float(timer(*arrays).mean) * 1e3)
        row: Dict[str, object] = {
            "layer": index,
            "original": original[0],
            "structured": structured[0],
        }
        row.update({name: float(np.median(values)) for name, values in samples.items()})
        row["tuned_records"] = sum(1 for name in samples if name.endswith("tuned"))
        rows.append(row)
        print(json.dumps(row), flush=True)

    def total(name: str) -> float:
        return sum(float(row.get(name, row[name.replace("tuned", "hand")])) for row in rows)

    lines = [
        f"# Tuned vs hand schedules per conv call, {args.model}, {target_key(target)}, "
        f"{threads} threads, median of {args.rounds} rounds",
        "",
        "| call | original hand ms | original tuned ms | structured hand ms "
        "| structured tuned ms | realized hand | realized tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        original_tuned = row.get("original-tuned", row["original-hand"])
        structured_tuned = row.get("structured-tuned", row["structured-hand"])
        lines.append(
            f"| {row['layer']} {row['structured']} | {row['original-hand']:.3f} | "
            f"{original_tuned:.3f} | {row['structured-hand']:.3f} | {structured_tuned:.3f} | "
            f"{row['original-hand'] / row['structured-hand']:.2f} | "
            f"{original_tuned / structured_tuned:.2f} |"
        )
    lines += [
        "",
        f"sum of conv calls: original hand {total('original-hand'):.2f} ms, tuned "
        f"{total('original-tuned'):.2f} ms; structured hand {total('structured-hand'):.2f} "
        f"ms, tuned {total('structured-tuned'):.2f} ms (a call without a tuned record "
        "counts with its hand time)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"tuned_layers-{target_key(target)}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
