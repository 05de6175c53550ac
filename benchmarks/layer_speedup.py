"""Per-layer speedup of structured convs under the x86 hand schedule, against the MAC ratio.

Every distinct conv shape of ResNet-18, ResNet-50 and MobileNetV2 at batch 1 and 224×224
(collected with forward hooks on the built-in models) is compiled twice with the same hand
schedule (``schedules/cpu/conv.py``): the original conv (trivial structure) and the structured one
(``3x3: c=C, n=2``; ``1x1: c=C/2``; depthwise 3×3 convs too with ``--depthwise``). Torch
eager runs the original conv as the peer. Layers no rule structures (the 7×7 stems and,
by default, depthwise convs) are left out.

Timing: each runtime in its own process, one process per runtime and
round, rounds alternating TVM and torch. Inside the TVM process the original and structured
kernels of a layer are timed interleaved, so the realized speedup of a round is a ratio
measured under the same machine load; the table reports medians over rounds.

    python benchmarks/layer_speedup.py            # all three models
    python benchmarks/layer_speedup.py --quick    # ResNet-18's 3x3 layers only
    python benchmarks/layer_speedup.py --models resnext50,mobilenet_v2 --plan "3x3:n=2,c=C"
                                                  # model-zoo families too, any plan

Writes ``benchmarks/results/layer_speedup-<cpu>.json`` and ``.md``.
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
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from tvm_structconv.threads import thread_environment
from tvm_structconv.timing import time_callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ("resnet18", "resnet50", "mobilenet_v2")
PLAN = "3x3:n=2,c=C;1x1:c=C/2"
DEPTHWISE_PLAN = "3x3:n=2,c=C,depthwise=yes;1x1:c=C/2"


@dataclass(frozen=True)
class Layer:
    """One distinct conv shape and where it occurs."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int
    height: int
    width: int
    reduced_channels: int
    reduced_kernel: int
    models: str
    count: int

    @property
    def key(self) -> str:
        """A short unique name: ``64x56x56-k3s1-g1->64``."""
        return (
            f"{self.in_channels}x{self.height}x{self.width}-k{self.kernel}s{self.stride}"
            f"-g{self.groups}->{self.out_channels}"
        )

    @property
    def out_size(self) -> int:
        """Output height (= width)."""
        return (self.height + 2 * self.padding - self.kernel) // self.stride + 1

    def macs(self, structured: bool) -> int:
        """Multiply-accumulates of the original or the structured conv."""
        channels = (self.reduced_channels if structured else self.in_channels) // self.groups
        kernel = self.reduced_kernel if structured else self.kernel
        return self.out_size**2 * self.out_channels * channels * kernel**2


def collect_layers(models: Sequence[str], quick: bool, plan_text: str = PLAN) -> List[Layer]:
    """The distinct conv shapes of ``models`` that the plan structures, in order of first use."""
    import torch
    import torch.nn as nn

    from tvm_structconv import zoo
    from tvm_structconv.models import create_model, list_models
    from tvm_structconv.plan import Plan

    plan = Plan.parse(plan_text)
    found: Dict[tuple, dict] = {}
    for name in models:
        model = (create_model(name) if name in list_models() else zoo.create(name)).eval()
        hooks = []
        for module_name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):

                def hook(layer, inputs, _output, module_name=module_name):
                    structure = plan.structure_for(module_name, layer)
                    if structure is None:
                        return
                    shape = (
                        layer.in_channels,
                        layer.out_channels,
                        layer.kernel_size[0],
                        layer.stride[0],
                        layer.padding[0],
                        layer.groups,
                        *inputs[0].shape[2:],
                        structure.reduced_channels,
                        structure.reduced_kernel_size[0],
                    )
                    entry = found.setdefault(shape, {"models": [], "count": 0})
                    entry["count"] += 1
                    if name not in entry["models"]:
                        entry["models"].append(name)

                hooks.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
        for hook in hooks:
            hook.remove()
    layers = [
        Layer(*shape, ",".join(entry["models"]), entry["count"]) for shape, entry in found.items()
    ]
    if quick:
        layers = [layer for layer in layers if layer.kernel == 3 and layer.groups == 1]
    return layers


# ---------------------------------------------------------------------------- TVM side
def build_layer(layer: Layer, structured: bool, target, path: pathlib.Path) -> None:
    """Compile the hand-scheduled NHWC kernel of ``layer`` into the shared library ``path``."""
    import tvm
    from tvm import te

    from tvm_structconv import ops
    from tvm_structconv.schedules.cpu.conv import StructuredConv2dRule
    from tvm_structconv.schedules.packing import conv_layout
    from tvm_structconv.structure import Structure

    channels = layer.reduced_channels if structured else layer.in_channels
    kernel = layer.reduced_kernel if structured else layer.kernel
    structure = Structure(layer.in_channels, layer.kernel, channels, kernel, layer.groups)
    block = conv_layout(target).block_size(layer.out_channels, layer.groups, layer.out_size)
    data = te.placeholder((1, layer.height, layer.width, layer.in_channels), name="data")
    alpha = te.placeholder(
        (layer.out_channels // block, kernel, kernel, channels // layer.groups, block), name="alpha"
    )
    out = ops.structured_conv2d_nhwc(
        data, alpha, structure, (layer.stride,) * 2, (layer.padding,) * 4
    )
    sch = StructuredConv2dRule().apply(te.create_prim_func([data, alpha, out]), target, False)
    tvm.compile(sch.mod, target=target).export_library(str(path))


def tvm_worker(layers: List[Layer], libdir: pathlib.Path, pairs: int) -> Dict[str, dict]:
    """Time the original and structured kernel of every layer, interleaved ``pairs`` times."""
    import tvm

    device = tvm.cpu()
    results = {}
    for layer in layers:
        runs = {}
        for variant in ("original", "structured"):
            module = tvm.runtime.load_module(str(libdir / f"{layer.key}-{variant}.so"))
            func = module["main"]
            args = [
                tvm.runtime.tensor(
                    np.random.default_rng(0)
                    .standard_normal([int(d) for d in param_shape])
                    .astype("float32"),
                    device,
                )
                for param_shape in _param_shapes(layer, variant == "structured")
            ]
            func(*args)
            runs[variant] = (
                module.time_evaluator("main", device, number=1, repeat=1, min_repeat_ms=40),
                args,
            )
        times = {"original": [], "structured": []}
        for _ in range(pairs):
            for variant, (timer, args) in runs.items():
                times[variant].append(float(timer(*args).mean) * 1e3)
        results[layer.key] = times
    return results


def _param_shapes(layer: Layer, structured: bool, target=None) -> List[tuple]:
    """Shapes of (data, packed alpha, output) of the kernel built by :func:`build_layer`."""
    from tvm_structconv.schedules.packing import conv_layout
    from tvm_structconv.targets import make_target

    target = target or make_target("x86")
    channels = layer.reduced_channels if structured else layer.in_channels
    kernel = layer.reduced_kernel if structured else layer.kernel
    block = conv_layout(target).block_size(layer.out_channels, layer.groups, layer.out_size)
    return [
        (1, layer.height, layer.width, layer.in_channels),
        (layer.out_channels // block, kernel, kernel, channels // layer.groups, block),
        (1, layer.out_size, layer.out_size, layer.out_channels),
    ]


# ---------------------------------------------------------------------------- torch side
def torch_worker(layers: List[Layer], threads: int, repeats: int) -> Dict[str, List[float]]:
    """Time torch eager's ``conv2d`` of every original layer (NCHW, oneDNN)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    results = {}
    with torch.no_grad():
        for layer in layers:
            x = torch.randn(1, layer.in_channels, layer.height, layer.width)
            w = torch.randn(
                layer.out_channels, layer.in_channels // layer.groups, layer.kernel, layer.kernel
            )

            def run():
                return F.conv2d(
                    x, w, stride=layer.stride, padding=layer.padding, groups=layer.groups
                )

            results[layer.key] = list(
                time_callable(run, repeats, min_repeat_ms=40, warmup=3).samples_ms
            )
    return results


# ---------------------------------------------------------------------------- driver
def _run_worker(
    kind: str, spec: pathlib.Path, libdir: pathlib.Path, threads: int, pairs: int
) -> dict:
    env = thread_environment(threads)
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--spec",
        str(spec),
        "--libdir",
        str(libdir),
        "--threads",
        str(threads),
        "--pairs",
        str(pairs),
    ]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def summarize(layers: List[Layer], tvm_rounds: List[dict], torch_rounds: List[dict]) -> List[dict]:
    """Per-layer medians and ratios (each ratio taken within a round, then the median)."""
    rows = []
    for layer in layers:
        original = [np.median(r[layer.key]["original"]) for r in tvm_rounds]
        structured = [np.median(r[layer.key]["structured"]) for r in tvm_rounds]
        realized = [
            np.median(np.array(r[layer.key]["original"]) / np.array(r[layer.key]["structured"]))
            for r in tvm_rounds
        ]
        torch_ms = [np.median(r[layer.key]) for r in torch_rounds]
        mac_ratio = layer.macs(False) / layer.macs(True)
        t_orig, t_struct, t_torch = (float(np.median(v)) for v in (original, structured, torch_ms))
        rows.append(
            {
                **asdict(layer),
                "key": layer.key,
                "out_size": layer.out_size,
                "macs_original": layer.macs(False),
                "macs_structured": layer.macs(True),
                "mac_ratio": mac_ratio,
                "original_ms": t_orig,
                "structured_ms": t_struct,
                "torch_ms": t_torch,
                "realized": float(np.median(realized)),
                "realized_by_round": [float(v) for v in realized],
                "quotient": float(np.median(realized)) / mac_ratio,
                "original_gmacs": layer.macs(False) / t_orig / 1e6,
                "structured_gmacs": layer.macs(True) / t_struct / 1e6,
                "torch_gmacs": layer.macs(False) / t_torch / 1e6,
                "structured_vs_torch": t_torch / t_struct,
            }
        )
    return rows


def markdown(rows: List[dict], header: Dict[str, str]) -> str:
    """The results as a markdown table with a header and a verdict on the targets."""
    lines = [f"# Layer speedup, {header['cpu']}", ""]
    lines += [f"* {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| layer | models (×count) | MAC ratio | original ms | structured ms | realized "
        "| quotient | orig GMAC/s | struct GMAC/s | torch ms | struct vs torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['key']} {r['kernel']}x{r['kernel']}→{r['reduced_kernel']}, "
            f"c={r['reduced_channels']} "
            f"| {r['models']} (×{r['count']}) | {r['mac_ratio']:.2f} | {r['original_ms']:.3f} "
            f"| {r['structured_ms']:.3f} | {r['realized']:.2f} | {r['quotient']:.2f} "
            f"| {r['original_gmacs']:.1f} | {r['structured_gmacs']:.1f} | {r['torch_ms']:.3f} "
            f"| {r['structured_vs_torch']:.2f}× |"
        )
    target = [r for r in rows if r["kernel"] == 3 and r["groups"] == 1 and r["in_channels"] >= 64]
    if target:
        met = sum(r["quotient"] >= 0.9 for r in target)
        faster = sum(r["structured_vs_torch"] > 1 for r in target)
        lines += [
            "",
            f"3×3 layers with ≥ 64 channels: quotient ≥ 0.9 in {met} of {len(target)} "
            f"(median {np.median([r['quotient'] for r in target]):.2f}); structured faster "
            f"than torch eager's original in {faster} of {len(target)}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Collect, build, time in separate processes, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18's 3x3 layers only")
    parser.add_argument("--depthwise", action="store_true", help="structure depthwise 3x3 too")
    parser.add_argument(
        "--models",
        help="comma-separated built-in models or model-zoo families (default: "
        + ",".join(MODELS)
        + ")",
    )
    parser.add_argument("--plan", help=f"structure plan (default: {PLAN})")
    parser.add_argument("--name", help="suffix of the result files (default: none)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (TVM, torch) processes")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved timings per round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out-dir", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", choices=["tvm", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument("--libdir", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        layers = [Layer(**entry) for entry in json.loads(args.spec.read_text())]
        if args.worker == "tvm":
            result = tvm_worker(layers, args.libdir, args.pairs)
        else:
            result = torch_worker(layers, args.threads, args.pairs)
        print(json.dumps(result))
        return

    import tvm

    from tvm_structconv.targets import make_target

    target = make_target("x86")
    cpu = str(target.attrs["mcpu"])
    plan = args.plan or (DEPTHWISE_PLAN if args.depthwise else PLAN)
    models = args.models.split(",") if args.models else MODELS
    layers = collect_layers(("resnet18",) if args.quick else models, args.quick, plan)
    print(f"{len(layers)} layers; target {target}; {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        libdir = pathlib.Path(tmp)
        start = time.time()
        for layer in layers:
            for variant in ("original", "structured"):
                build_layer(
                    layer, variant == "structured", target, libdir / f"{layer.key}-{variant}.so"
                )
        print(f"built {2 * len(layers)} kernels in {time.time() - start:.0f} s", flush=True)
        spec = libdir / "layers.json"
        spec.write_text(json.dumps([asdict(layer) for layer in layers]))
        tvm_rounds, torch_rounds = [], []
        for round_index in range(args.rounds):
            tvm_rounds.append(_run_worker("tvm", spec, libdir, args.threads, args.pairs))
            torch_rounds.append(_run_worker("torch", spec, libdir, args.threads, args.pairs))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    rows = summarize(layers, tvm_rounds, torch_rounds)
    header = {
        "cpu": cpu,
        "target": str(target),
        "threads": str(args.threads),
        "tvm": tvm.__version__,
        "rounds": f"{args.rounds} (TVM and torch each in its own process)",
        "plan": plan,
        "mode": "quick (ResNet-18 3x3)" if args.quick else "all layers of " + ",".join(models),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    table = markdown(rows, header)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ("-quick" if args.quick else "") + (f"-{args.name}" if args.name else "")
    stem = args.out_dir / f"layer_speedup-{cpu}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps({"header": header, "layers": rows}, indent=1))
    stem.with_suffix(".md").write_text(table)
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
