"""The latency-budget planner on the built-in models: requested vs measured speedup, damage
against the uniform plans, and local vs RPC plans.

For each model (224×224, batch 1, fp32, x86 hand schedules, one TVM thread):

* the planner's latency table (cached beside the tuning logs: a rerun reuses it);
* for each requested speedup (1.3, 1.6, 2.0) the plan, its compiled model timed alternately
  with the original (minima of ``--rounds`` alternating samples), predicted vs measured;
* each uniform plan (``3x3:n=2,c=C`` …) compiled and timed the same way, and the planner asked
  for the speedup that uniform plan measured: the damage of both at (about) equal latency;
* the frontier plot (damage vs latency; uniform plans and planned models as points).

With ``--rpc-check MODEL`` the table of that model is measured again through a TVM RPC
tracker and server started on 127.0.0.1, and the plans for the requested speedups are compared
with the local ones, layer by layer.

    python benchmarks/planner.py                       # the three models (about 40 min)
    python benchmarks/planner.py --models resnet18 --rpc-check resnet18 --prefix planner-rpc

Writes ``benchmarks/results/<prefix>-<cpu>.{json,md}`` and ``<prefix>-<cpu>-<model>.png``
(``--prefix`` default ``planner``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import time
from typing import Dict, List, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ("resnet18", "resnet50", "mobilenet_v2")
SPEEDUPS = (1.3, 1.6, 2.0)
#: The uniform plans the planner is asked to match (at their measured speedup).
MATCHED = ("3x3:n=2,c=C", "1x1:c=C/2", "3x3:n=2,c=C;1x1:c=C/2")


def _row(kind: str, label: str, result, requested: Optional[float] = None) -> Dict[str, object]:
    """One line of the table from a measured :class:`~tvm_structconv.planner.PlanResult`."""
    measured = result.measured_speedup
    return {
        "kind": kind,
        "plan": label,
        "requested": requested,
        "predicted": result.predicted_speedup,
        "measured": measured,
        "error": None if requested is None else measured / requested - 1,
        "original_ms": result.measured_ms["original"],
        "planned_ms": result.measured_ms["planned"],
        "predicted_ms": result.predicted_ms,
        "damage": result.total_damage,
        "structured": len(result.structured()),
        "tries": result.tries,
        "layers": len(result.table.layers),
        "choice": {name: result.chosen(name).describe() for name in result.structured()},
    }


def run_model(name: str, args: argparse.Namespace) -> Dict[str, object]:
    """Plan, measure and plot one model; its rows and table facts."""
    from tvm_structconv.planner import (
        UNIFORM_PLANS,
        BudgetError,
        FrontierPoint,
        Planner,
        plot_frontier,
    )
    from tvm_structconv.planner.frontier import uniform_choice

    def progress(message: str) -> None:
        print(f"[{name}] {message}", flush=True)

    start = time.time()
    planner = Planner(
        name, "x86", image_size=args.image_size, rounds=args.rounds, progress=progress
    )
    setup_s = time.time() - start
    rows: List[Dict[str, object]] = []
    planned_points, uniform_points = [], []
    base = None
    for speedup in args.speedups:
        try:
            result = planner.plan_measured(speedup=speedup)
        except BudgetError as error:
            rows.append(
                {
                    "kind": "planned",
                    "plan": f"{speedup}x",
                    "requested": speedup,
                    "unreachable": str(error),
                }
            )
            progress(str(error))
            continue
        base = base or result
        rows.append(_row("planned", f"{speedup}x", result, speedup))
        planned_points.append(
            FrontierPoint(
                f"{speedup}x",
                result.predicted_ms,
                result.total_damage,
                result.choice,
                planner.original_ms / result.measured_speedup,
            )
        )
        progress(result.summary().splitlines()[-1])
    base = base or planner.plan(speedup=1.0)
    for text in UNIFORM_PLANS:
        uniform = planner.measure(planner.result(uniform_choice(base, text), math.nan))
        row = _row("uniform", text, uniform)
        rows.append(row)
        uniform_points.append(
            FrontierPoint(
                text,
                uniform.predicted_ms,
                uniform.total_damage,
                uniform.choice,
                planner.original_ms / uniform.measured_speedup,
            )
        )
        progress(f"uniform {text}: {uniform.summary().splitlines()[-1]}")
        if uniform.measured_speedup < 1.02 or text not in MATCHED:
            continue
        try:
            matched = planner.plan_measured(speedup=uniform.measured_speedup)
        except BudgetError as error:
            progress(str(error))
            continue
        matched_row = _row("planned", f"at {text}", matched, uniform.measured_speedup)
        matched_row["uniform_damage"] = uniform.total_damage
        rows.append(matched_row)
        progress(f"planned at {text}'s speedup: {matched.summary().splitlines()[-1]}")
        planned_points.append(
            FrontierPoint(
                f"= {text}",
                matched.predicted_ms,
                matched.total_damage,
                matched.choice,
                planner.original_ms / matched.measured_speedup,
            )
        )
    cpu = str(planner.target.attrs["mcpu"])
    plot = args.out_dir / f"{args.prefix}-{cpu}-{name}.png"
    plot_frontier(base, plot, uniform_points, planned_points)
    return {
        "model": name,
        "rows": rows,
        "original_ms": planner.original_ms,
        "kernel_scale": planner.scale,
        "fastest_speedup": planner.original_ms / planner.fastest_ms(),
        "fastest_measured_speedup": planner.original_ms / planner.fastest_measured_ms,
        "weight_stream_gb_per_s": 1e-6 / planner.byte_ms if planner.byte_ms else None,
        "layers": len(planner.table.layers),
        "kernels_timed": planner.table.measured,
        "kernels_reused": planner.table.reused,
        "setup_s": setup_s,
        "plot": plot.name,
        "local_choices": {
            row["plan"]: row["choice"]
            for row in rows
            if row["kind"] == "planned" and "choice" in row
        },
        "planner": planner,
    }


def _compare(here, there, args: argparse.Namespace) -> List[Dict[str, object]]:
    """For each requested speedup: the plans of two planners of one model, layer by layer, and
    the second one's plan compiled and timed on this machine by the first."""
    from tvm_structconv.planner import BudgetError

    rows = []
    for speedup in args.speedups:
        try:
            mine, theirs = here.plan(speedup=speedup), there.plan(speedup=speedup)
        except BudgetError as error:
            rows.append({"requested": speedup, "unreachable": str(error)})
            continue
        differ = sorted(n for n in mine.choice if mine.choice[n] != theirs.choice[n])
        measured = here.measure(here.result(theirs.choice, mine.budget_ms)).measured_speedup
        rows.append(
            {
                "requested": speedup,
                "same_plan": not differ,
                "layers_differing": differ,
                "damage": [mine.total_damage, theirs.total_damage],
                "structured": [len(mine.structured()), len(theirs.structured())],
                "measured_here": measured,
            }
        )
    return rows


def _kernel_ratios(here, there) -> Dict[str, object]:
    """Median and range of ``there``'s kernel latencies over ``here``'s."""
    ratios = sorted(
        there.table.latency_ms[n][i] / latency
        for n, row in here.table.latency_ms.items()
        for i, latency in enumerate(row)
        if latency and there.table.latency_ms[n][i]
    )
    return {"median": ratios[len(ratios) // 2], "range": [ratios[0], ratios[-1]]}


def rpc_check(name: str, local: Dict[str, object], args: argparse.Namespace) -> Dict[str, object]:
    """The plans of ``name`` from a table measured through RPC (127.0.0.1), against the local
    ones, and against a second local table measured afresh (how much two local measurements of
    the same machine differ: a plan that flips between near-equal choices flips there too).
    Each other planner's plan is also compiled and timed locally: does it meet the request?"""
    import tempfile

    from tvm_structconv.local_rpc import local_rpc_cluster
    from tvm_structconv.planner import Planner
    from tvm_structconv.tuning_logs import LOGS_ENV

    def progress(label: str):
        return lambda message: print(f"[{label} {name}] {message}", flush=True)

    def fresh_planner(label: str, **remote) -> Planner:
        """A planner whose table is measured afresh (no cached table: every kernel timed)."""
        with tempfile.TemporaryDirectory() as fresh:
            os.environ[LOGS_ENV] = fresh
            return Planner(
                name,
                "x86",
                image_size=args.image_size,
                rounds=args.rounds,
                cold_weights=args.cold,
                progress=progress(label),
                **remote,
            )

    local_planner = local["planner"]
    saved = os.environ.get(LOGS_ENV)
    try:
        with local_rpc_cluster("bench", 1, timeout=90) as cluster:
            remote = fresh_planner("rpc", rpc_tracker=cluster.address, device_key="bench")
        again = fresh_planner("local again")
    finally:
        if saved is None:
            os.environ.pop(LOGS_ENV, None)
        else:
            os.environ[LOGS_ENV] = saved
    return {
        "model": name,
        "rpc": _compare(local_planner, remote, args),
        "local_again": _compare(local_planner, again, args),
        "kernel_ratio": {
            "rpc": _kernel_ratios(local_planner, remote),
            "local_again": _kernel_ratios(local_planner, again),
        },
        "original_ms": {
            "local": local_planner.original_ms,
            "rpc": remote.original_ms,
            "local_again": again.original_ms,
        },
    }


def _rate(gb_per_s: Optional[float]) -> str:
    return "none (weights stay in cache)" if gb_per_s is None else f"{gb_per_s:.1f} GB/s"


def markdown(models: List[Dict[str, object]], rpc: Optional[Dict[str, object]], header) -> str:
    """The results as a markdown report."""
    lines = [f"# Latency-budget planner, {header['cpu']}", ""]
    lines += [f"* {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "## Requested vs measured speedup",
        "",
        "| model | requested | predicted | measured | measured / requested | damage "
        "| layers structured | builds measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for row in model["rows"]:
            if row["kind"] != "planned" or not str(row["plan"]).endswith("x"):
                continue
            if "unreachable" in row:
                lines.append(
                    f"| {model['model']} | {row['requested']:.2f}x | unreachable: "
                    f"{row['unreachable']} | | | | | |"
                )
                continue
            lines.append(
                f"| {model['model']} | {row['requested']:.2f}x | {row['predicted']:.2f}x | "
                f"{row['measured']:.2f}x | {1 + row['error']:.3f} | {row['damage']:.2f} | "
                f"{row['structured']} of {row['layers']} | {row['tries']} |"
            )
    lines += [
        "",
        "## Damage at equal measured latency: uniform plans vs the planner",
        "",
        "| model | uniform plan | its measured speedup | its damage | planner's measured "
        "speedup for that request | planner's damage | damage ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in models:
        uniform = {row["plan"]: row for row in model["rows"] if row["kind"] == "uniform"}
        matched = {
            row["plan"][3:]: row
            for row in model["rows"]
            if row["kind"] == "planned" and str(row["plan"]).startswith("at ")
        }
        for text, row in uniform.items():
            if text in matched:
                other = matched[text]
                ratio = other["damage"] / row["damage"] if row["damage"] else float("nan")
                lines.append(
                    f"| {model['model']} | `{text}` | {row['measured']:.2f}x | {row['damage']:.2f} "
                    f"| {other['measured']:.2f}x | {other['damage']:.2f} | {ratio:.2f} |"
                )
            else:
                lines.append(
                    f"| {model['model']} | `{text}` | {row['measured']:.2f}x | {row['damage']:.2f} "
                    "| (not asked: only the plans of MATCHED, faster than 1.02x) | | |"
                )
    lines += ["", "## Tables", ""]
    for model in models:
        lines.append(
            f"* {model['model']}: {model['layers']} layers, {model['kernels_timed']} kernels timed "
            f"({model['kernels_reused']} reused from the cache), setup {model['setup_s']:.0f} s; "
            f"original {model['original_ms']:.2f} ms; fitted kernel scale "
            f"{model['kernel_scale']:.3f} and "
            f"weight streaming {_rate(model['weight_stream_gb_per_s'])}; fastest plan "
            f"{model['fastest_measured_speedup']:.2f}x measured; plot `{model['plot']}`"
        )
    if rpc:
        lines += ["", f"## RPC (server on 127.0.0.1) vs local, {rpc['model']}", ""]
        lines.append(
            "Each table is measured from scratch and planned for the same requests; the other "
            "plan is then compiled and timed on this machine against the original by the first "
            "local planner. A second local table shows how much two measurements of the same "
            "machine differ."
        )
        lines.append("")
        for key, label in (("rpc", "RPC"), ("local_again", "local, measured again")):
            ratio = rpc["kernel_ratio"][key]
            lines.append(
                f"* kernel latency {label} / local: median {ratio['median']:.3f}, range "
                f"{ratio['range'][0]:.3f}–{ratio['range'][1]:.3f}; original "
                f"{rpc['original_ms'][key]:.2f} ms (local {rpc['original_ms']['local']:.2f})"
            )
        lines += [
            "",
            "| requested | table | same plan | layers differing | damage (local / it) | "
            "layers structured (local / it) | its plan measured here |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, label in (("rpc", "RPC"), ("local_again", "local again")):
            for item in rpc[key]:
                if "unreachable" in item:
                    lines.append(f"| {item['requested']}x | {label} | unreachable | | | | |")
                    continue
                lines.append(
                    f"| {item['requested']}x | {label} | {'yes' if item['same_plan'] else 'no'} "
                    f"| {len(item['layers_differing'])} | {item['damage'][0]:.2f} / "
                    f"{item['damage'][1]:.2f} | {item['structured'][0]} / {item['structured'][1]} "
                    f"| {item['measured_here']:.2f}x |"
                )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the benchmark with one TVM thread and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--speedups", default=",".join(map(str, SPEEDUPS)))
    parser.add_argument("--rounds", type=int, default=10, help="alternating whole-model samples")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rpc-check", default=None, metavar="MODEL")
    parser.add_argument(
        "--cold", action="store_true", help="time kernels with cold weights (see timers.py)"
    )
    parser.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--prefix", default="planner", help="file names: <prefix>-<cpu>.{json,md}, -<model>.png"
    )
    args = parser.parse_args(argv)
    args.speedups = [float(value) for value in args.speedups.split(",")]
    args.out_dir.mkdir(parents=True, exist_ok=True)

    from tvm_structconv.threads import pinned_threads

    with pinned_threads(1):
        import tvm

        from tvm_structconv.targets import make_target

        cpu = str(make_target("x86").attrs["mcpu"])
        header = {
            "cpu": cpu,
            "tvm": tvm.__version__,
            "threads": "1 (TVM_NUM_THREADS=1)",
            "timing": f"minimum of {args.rounds} alternating samples (original, planned) in "
            "one process, each the mean of runs filling 100 ms",
            "kernels": "hand schedules, minimum of 5 rounds over all kernels, "
            + ("3 cold-weight runs each" if args.cold else "20 ms each (warm caches)")
            + "; the original and the fastest plan measured whole fit a scale of the kernel sum "
            "and a cost per weight byte",
            "image size": str(args.image_size),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        }
        models: List[Dict[str, object]] = []
        rpc = None
        stem = args.out_dir / f"{args.prefix}-{cpu}"
        for name in args.models.split(","):
            models.append(run_model(name, args))
            if name == args.rpc_check:  # right away: its local plans are at hand
                rpc = rpc_check(name, models[-1], args)
            models[-1].pop("planner")
            write(stem, header, models, rpc)  # after every model: a stopped run keeps them


def write(stem: pathlib.Path, header, models, rpc) -> None:
    """Write ``stem``.json and .md with what has been measured so far."""
    text = markdown(models, rpc, header)
    print(text, flush=True)
    stem.with_suffix(".json").write_text(
        json.dumps({"header": header, "models": models, "rpc": rpc}, indent=1)
    )
    stem.with_suffix(".md").write_text(text)
    print(f"wrote {stem}.json and .md", flush=True)


if __name__ == "__main__":
    main()
