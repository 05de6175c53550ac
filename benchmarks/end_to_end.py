"""End-to-end latency of a built-in model: TVM original vs structured (hand schedules) vs peers.

The structured model comes from :func:`tvm_structconv.models.create_structured` (default plan
``3x3: c=C, n=2``); the original build compiles the same weights without the structured
rewrite (every conv still emitted as the fused op with the trivial structure, so both builds
get the same schedules). Peers run the same model: onnxruntime on its ONNX export and torch
eager. Each runtime is timed in its own process, rounds alternating between runtimes
(DESIGN.md §3); the report gives median, p90 and p99 over all samples and the per-round
medians, with MACs and parameters beside them (DESIGN.md §5).

    python benchmarks/end_to_end.py                       # resnet18
    python benchmarks/end_to_end.py --model mobilenet_v2 --rounds 5

Writes ``benchmarks/results/end_to_end-<model>-<cpu>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNTIMES = ("tvm-original", "tvm-structured", "onnxruntime", "torch-eager")


def _samples(run, seconds: float, repeats: int) -> List[float]:
    """``repeats`` samples of ``run``'s mean latency in ms, each over at least ``seconds``."""
    for _ in range(3):
        run()
    samples = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            run()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        samples.append(elapsed / count * 1e3)
    return samples


def profile(kind: str, workdir: pathlib.Path, runs: int = 10) -> Dict[str, float]:
    """Mean ms per call of every kernel of a TVM build (VM instrumentation; own process).

    Kernels of the same name (one function called for several layers) are summed.
    """
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(workdir / f"{kind}.so")), tvm.cpu())
    data = tvm.runtime.tensor(np.load(workdir / "input.npy"))
    for _ in range(3):
        vm["main"](data)
    totals: Dict[str, float] = {}
    started: Dict[str, float] = {}

    def instrument(_func, symbol, before, _result, *_args):
        if before:
            started[symbol] = time.perf_counter()
        else:
            totals[symbol] = totals.get(symbol, 0.0) + time.perf_counter() - started[symbol]
        return 0

    vm.set_instrument(instrument)
    for _ in range(runs):
        vm["main"](data)
    return {name: seconds / runs * 1e3 for name, seconds in
            sorted(totals.items(), key=lambda item: -item[1])}


def worker(kind: str, workdir: pathlib.Path, threads: int, repeats: int) -> List[float]:
    """Latency samples (ms) of one runtime; runs in its own process."""
    x = np.load(workdir / "input.npy")
    if kind.startswith("tvm"):
        import tvm
        from tvm import relax

        library = tvm.runtime.load_module(str(workdir / f"{kind}.so"))
        vm = relax.VirtualMachine(library, tvm.cpu())
        data = tvm.runtime.tensor(x)
        timer = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeats, min_repeat_ms=100)
        vm["main"](data)
        return [float(v) * 1e3 for v in timer(data).results]
    if kind == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(workdir / "model.onnx"), options,
                                               providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return _samples(lambda: session.run(None, {name: x}), 0.1, repeats)
    import torch

    torch.set_num_threads(threads)
    model = torch.load(workdir / "model.pt", weights_only=False).eval()
    tensor = torch.from_numpy(x)
    with torch.no_grad():
        return _samples(lambda: model(tensor), 0.1, repeats)


def prepare(model_name: str, workdir: pathlib.Path) -> Dict[str, str]:
    """Build both TVM models, export ONNX and the torch model into ``workdir``; check outputs."""
    import torch

    from tvm_structconv.build import compile_model, max_errors
    from tvm_structconv.export import export
    from tvm_structconv.frontend import load_model
    from tvm_structconv.models import create_structured

    structured = create_structured(model_name)
    x = structured.example_input
    np.save(workdir / "input.npy", x.numpy())
    torch.save(structured.model, workdir / "model.pt")
    export(structured.model, workdir / "model.onnx", x, structured.manifest)
    expected = [structured.model(x).detach().numpy().astype(np.float64)]
    imported = load_model(structured.model, x, structured.manifest)
    info = {"cost": structured.cost().summary()}
    for name, flag in (("tvm-original", False), ("tvm-structured", True)):
        start = time.time()
        compiled = compile_model(imported, "x86", structured=flag)
        info[f"{name} compile s"] = f"{time.time() - start:.1f}"
        _, relative = max_errors(compiled.run(x.numpy()), expected)
        info[f"{name} max relative error vs torch"] = f"{relative:.1e}"
        compiled.export(workdir / f"{name}.so")
        info["target"] = str(compiled.target)
    return info


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Prepare, then time every runtime in its own process, rounds alternating."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10, help="samples per runtime and round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--profile", action="store_true",
                        help="also print where the time of each TVM build goes, per kernel")
    parser.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker.startswith("profile:"):
            print(json.dumps(profile(args.worker.split(":", 1)[1], args.workdir)))
        else:
            print(json.dumps(worker(args.worker, args.workdir, args.threads, args.repeats)))
        return

    import tvm

    runtimes = args.runtimes.split(",")
    env = dict(os.environ, TVM_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    samples: Dict[str, List[List[float]]] = {name: [] for name in runtimes}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        info = prepare(args.model, workdir)
        print(json.dumps(info, indent=1), flush=True)
        for round_index in range(args.rounds):
            for name in runtimes:
                command = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir),
                           "--threads", str(args.threads), "--repeats", str(args.repeats)]
                result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
                samples[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
            medians = {name: f"{np.median(samples[name][-1]):.2f}" for name in runtimes}
            print(f"round {round_index + 1}: {medians}", flush=True)
        profiles = {}
        if args.profile:
            for name in (n for n in runtimes if n.startswith("tvm")):
                command = [sys.executable, __file__, "--worker", f"profile:{name}",
                           "--workdir", str(workdir)]
                result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
                profiles[name] = json.loads(result.stdout.strip().splitlines()[-1])

    cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    rows = []
    for name in runtimes:
        flat = np.concatenate(samples[name])
        by_round = [float(np.median(s)) for s in samples[name]]
        rows.append({"runtime": name, "median_ms": float(np.median(flat)),
                     "p90_ms": float(np.percentile(flat, 90)), "p99_ms": float(np.percentile(flat, 99)),
                     "round_medians_ms": by_round})
    by_name = {row["runtime"]: row for row in rows}
    ratios = {}
    if "tvm-original" in by_name and "tvm-structured" in by_name:
        ratios["structured speedup over original, per round"] = [
            a / b for a, b in zip(by_name["tvm-original"]["round_medians_ms"],
                                  by_name["tvm-structured"]["round_medians_ms"])]
    header = {"model": args.model, "cpu": cpu, "threads": args.threads, "rounds": args.rounds,
              "tvm": tvm.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
              "load average at end": " ".join(f"{v:.2f}" for v in os.getloadavg()), **info}
    lines = [f"# End-to-end {args.model}, {cpu}, batch 1, fp32, {args.threads} threads", ""]
    lines += [f"* {key}: {value}" for key, value in header.items()]
    lines += ["", "| runtime | median ms | p90 ms | p99 ms | round medians ms |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['runtime']} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | "
                     f"{row['p99_ms']:.2f} | {', '.join(f'{v:.2f}' for v in row['round_medians_ms'])} |")
    for key, values in ratios.items():
        lines += ["", f"{key}: {', '.join(f'{v:.2f}' for v in values)}"]
    for name, kernels in profiles.items():
        total = sum(kernels.values())
        convs = sum(ms for kernel, ms in kernels.items() if "conv2d" in kernel)
        lines += ["", f"Where {name}'s time goes (instrumented run, {total:.2f} ms in kernels): "
                  f"convs {convs:.2f} ms ({100 * convs / total:.0f}%)", "",
                  "| kernel | ms | share |", "|---|---|---|"]
        lines += [f"| {kernel} | {ms:.3f} | {100 * ms / total:.1f}% |"
                  for kernel, ms in list(kernels.items())[:12]]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"end_to_end-{args.model}-{cpu}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"header": header, "rows": rows, "ratios": ratios, "profiles": profiles}, indent=1))
    stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
