"""Training speed of the structured layers and cost of the regularizer, ResNet-18, CPU.

Writes ``benchmarks/results/training_speed.{json,md}``; ``docs/experiments.md`` quotes them::

    nice -n 5 python benchmarks/training_speed.py            # about ten minutes on 2 cores
    python benchmarks/training_speed.py --rounds 2 --quick   # smoke run

Every comparison is timed inside one process, the variants interleaved call by call (A, B,
A, B …), with ``torch.set_num_threads(--threads)``; the tables give the minimum over the calls
(the run least disturbed by other jobs) and ratios of minima. Three measurements:

1. Each 3×3 conv shape of ResNet-18 (batch 32, fp32, forward + backward): ``nn.Conv2d``
   against ``StructuredConv2d`` (``c = C, n = 2``) as it picks (``method="auto"``) and forced
   to each method (``"pooled"``: box sum then 2×2 conv; ``"composed"``: the 3×3 conv with
   ``A · alpha``), contiguous and channels-last.
2. A whole ResNet-18 training step (forward, backward, SGD), original against every 3×3 conv
   structured (``StructuredConv2d``, each method).
3. The regularizer (forward + backward) against a ResNet-18 training step at batch 8 and 64,
   the cached one against ``Structure.residual`` per layer; and per kernel size.
4. ``StructuredLinear`` (``c = C/2``, forward + backward) against ``nn.Linear``: ResNet-18's
   classifier 512→1000 and a 4096-wide MLP layer at batch 32, the classifier at batch 4096.
5. The pieces of (1) alone, no autograd: the 3×3 conv's forward + both gradients (one oneDNN
   backward call, as autograd makes it), the 2×2 conv's on a ready ``S``, and forming ``S``
   plus the pool's adjoint: how far the convs alone are from the MAC ratio, and what the box
   sum adds.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import resource
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from paper_questions import training_step  # benchmarks/ is sys.path[0]

from tvm_structconv.models import create_model
from tvm_structconv.nn import (
    StructuralRegularizer,
    StructuredConv2d,
    StructuredLinear,
    structurize,
)
from tvm_structconv.nn.functional import _padded_pool, _pool_backward, choose_method
from tvm_structconv.plan import Plan
from tvm_structconv.timing import interleaved_samples

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: ResNet-18's 3×3 convs: (in channels, out channels, input size, stride).
LAYERS = (
    (64, 64, 56, 1),
    (128, 128, 28, 1),
    (256, 256, 14, 1),
    (512, 512, 7, 1),
    (64, 128, 56, 2),
    (128, 256, 28, 2),
    (256, 512, 14, 2),
)
METHODS = ("auto", "pooled", "composed")


def interleaved_minima(functions: Dict[str, Callable[[], None]], count: int) -> Dict[str, float]:
    """Minimum ms of each function over ``count`` calls, the functions called in turn.

    Two warm-up rounds first (:func:`~tvm_structconv.timing.interleaved_samples`). On a shared
    machine the minimum is the call least slowed by other jobs.
    """
    return {name: min(values) for name, values in interleaved_samples(functions, count).items()}


def _page_faults(function: Callable[[], None], count: int = 3) -> float:
    """Minor page faults per call of ``function`` (fresh memory the kernel maps and zeroes)."""
    function()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        function()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / count


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    upstream = torch.randn_like(layer(x))

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(upstream)

    return step


def _structured(conv: nn.Conv2d, method: str) -> StructuredConv2d:
    layer = StructuredConv2d.from_conv(conv, conv.in_channels, 2)
    layer.method = method
    return layer


def layer_speed(
    batch: int, rounds: int, layers: Sequence[Tuple[int, int, int, int]] = LAYERS
) -> List[Dict[str, float]]:
    """(1) forward + backward of every ResNet-18 3×3 conv shape, original vs structured."""
    rows = []
    for in_channels, out_channels, size, stride in layers:
        torch.manual_seed(0)
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        variants: Dict[str, Callable[[], None]] = {}
        for layout in ("contiguous", "channels_last"):
            form = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(batch, in_channels, size, size).to(memory_format=form)
            x.requires_grad_()
            # a copy: Module.to converts in place, and a channels-last weight makes the
            # contiguous conv run channels-last (its output too)
            variants[f"conv {layout}"] = _forward_backward(
                copy.deepcopy(conv).to(memory_format=form), x
            )
            for method in METHODS if layout == "contiguous" else ("auto", "pooled"):
                layer = _structured(conv, method).to(memory_format=form)
                variants[f"{method} {layout}"] = _forward_backward(layer, x)
        minima = interleaved_minima(variants, rounds)
        minima.update(
            {
                f"faults {name}": _page_faults(variants[f"{name} contiguous"])
                for name in ("conv", "auto")
            }
        )
        shape = {"in": in_channels, "out": out_channels, "size": size, "stride": stride}
        probe = _structured(conv, "auto")
        x = torch.randn(batch, in_channels, size, size, requires_grad=True)
        picks = choose_method(probe.structure, x, probe.alpha)
        rows.append({**shape, **minima, "picks": picks})
        print(f"layer {shape}: {minima}", flush=True)
    return rows


def model_speed(batch: int, size: int, rounds: int) -> Dict[str, float]:
    """(2) a ResNet-18 training step, original vs every 3×3 conv a StructuredConv2d."""
    torch.manual_seed(0)
    original = create_model("resnet18")
    image = (3, size, size)
    steps = {"original": training_step(original, batch, image_shape=image)}
    for method in METHODS:
        structured, _ = structurize(original, Plan.parse("3x3:c=C,n=2"), replace=True)
        for module in structured.modules():
            if isinstance(module, StructuredConv2d):
                module.method = method
        steps[method] = training_step(structured, batch, image_shape=image)
    minima = interleaved_minima(steps, rounds)
    print(f"model batch {batch}: {minima}", flush=True)
    return {"batch": batch, "size": size, **minima}


def regularizer_cost(batches: Sequence[int], size: int, rounds: int) -> List[Dict[str, float]]:
    """(3) the regularizer alone (cached, and per layer through Structure.residual) vs a step."""
    torch.manual_seed(0)
    model = create_model("resnet18")
    rows = []
    for plan_text in ("3x3:c=C,n=2", "3x3:c=C/2,n=2"):
        regularizer = StructuralRegularizer(model, Plan.parse(plan_text), 0.1)
        layers = [(model.get_submodule(n), s) for n, s in regularizer.structures.items()]

        def cached() -> None:
            model.zero_grad(set_to_none=True)
            regularizer().backward()

        def per_layer() -> None:
            model.zero_grad(set_to_none=True)
            torch.stack([s.residual(m.weight) for m, s in layers]).sum().backward()

        for batch in batches:
            minima = interleaved_minima(
                {
                    "step": training_step(model, batch, image_shape=(3, size, size)),
                    "regularizer": cached,
                    "Structure.residual": per_layer,
                },
                rounds,
            )
            rows.append({"plan": plan_text, "batch": batch, "size": size, **minima})
            print(f"regularizer {plan_text} batch {batch}: {minima}", flush=True)
    return rows


def kernel_cost(rounds: int) -> List[Dict[str, float]]:
    """(3) one 256-channel layer at 14×14: the regularizer per kernel size against its step."""
    rows = []
    for kernel in (3, 5, 7):
        torch.manual_seed(0)
        conv = nn.Conv2d(256, 256, kernel, padding=kernel // 2, bias=False)
        for plan_text in (f"{kernel}x{kernel}:c=C,n={kernel - 1}", f"{kernel}x{kernel}:c=C/2,n=2"):
            regularizer = StructuralRegularizer(conv, Plan.parse(plan_text), 0.1)

            def alone() -> None:
                conv.zero_grad(set_to_none=True)
                regularizer().backward()

            steps = {}
            for batch in (1, 8, 64):
                x = torch.randn(batch, 256, 14, 14)
                steps[f"step {batch}"] = _forward_backward(conv, x)
            minima = interleaved_minima({"regularizer": alone, **steps}, rounds)
            rows.append({"plan": plan_text, **minima})
            print(f"kernel {plan_text}: {minima}", flush=True)
    return rows


def conv_pieces(
    batch: int, rounds: int, layers: Sequence[Tuple[int, int, int, int]] = LAYERS
) -> List[Dict[str, float]]:
    """(5) the convs of (1) alone and the box sum alone, contiguous, no autograd."""
    rows = []
    for in_channels, out_channels, size, stride in layers:
        torch.manual_seed(0)
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        layer = _structured(conv, "pooled")
        structure, weight, alpha = layer.structure, conv.weight.detach(), layer.alpha.detach()
        x = torch.randn(batch, in_channels, size, size)
        pooled = _padded_pool(x, structure, (1, 1), (1, 1))
        grad = torch.randn_like(F.conv2d(x, weight, None, stride, 1))
        pooled_grad = torch.randn_like(pooled)

        def convs(source: torch.Tensor, kernel: torch.Tensor, padding: int) -> Callable[[], None]:
            def run() -> None:
                F.conv2d(source, kernel, None, stride, padding)
                torch.ops.aten.convolution_backward(
                    grad, source, kernel, None, [stride] * 2, [padding] * 2, [1, 1], False,
                    [0, 0], 1, [True, True, False],
                )  # fmt: skip

            return run

        def box() -> None:
            _padded_pool(x, structure, (1, 1), (1, 1))
            _pool_backward(pooled_grad, structure, (1, 1), (1, 1, 1, 1))

        minima = interleaved_minima(
            {"3x3 convs": convs(x, weight, 1), "2x2 convs": convs(pooled, alpha, 0), "box": box},
            rounds,
        )
        shape = {"in": in_channels, "out": out_channels, "size": size, "stride": stride}
        rows.append({**shape, **minima})
        print(f"pieces {shape}: {minima}", flush=True)
    return rows


#: Linear layers of :func:`linear_speed`: (in features, out features, batch).
LINEARS = ((512, 1000, 32), (4096, 4096, 32), (512, 1000, 4096))


def linear_speed(rounds: int) -> List[Dict[str, float]]:
    """(4) forward + backward of linear layers, ``nn.Linear`` vs ``StructuredLinear``."""
    rows = []
    for in_features, out_features, batch in LINEARS:
        torch.manual_seed(0)
        linear = nn.Linear(in_features, out_features)
        x = torch.randn(batch, in_features, requires_grad=True)
        variants: Dict[str, Callable[[], None]] = {"linear": _forward_backward(linear, x)}
        for method in METHODS:
            layer = StructuredLinear.from_linear(linear, in_features // 2)
            layer.method = method
            variants[method] = _forward_backward(layer, x)
        minima = interleaved_minima(variants, rounds)
        rows.append({"in": in_features, "out": out_features, "batch": batch, **minima})
        print(f"linear {in_features}->{out_features} batch {batch}: {minima}", flush=True)
    return rows


def _layer_name(row: Dict) -> str:
    name = f"{row['in']}@{row['size']}"
    if row["out"] != row["in"] or row["stride"] != 1:
        name = f"{row['in']}→{row['out']}@{row['size']}, stride {row['stride']}"
    return name


def _conditions(results: Dict, part: str) -> str:
    conditions = results.get("conditions", {}).get(part)
    if conditions is None:
        return "calls and load not recorded"
    return (
        f"{conditions['rounds']} calls, load {conditions['load_before']:.1f} → "
        f"{conditions['load_after']:.1f}"
    )


def _layers_table(results: Dict) -> List[str]:
    lines = [
        f"**Per layer** (batch {results['batch']}, forward + backward, `c = C, n = 2`; "
        "MAC ratio 2.25×; " + _conditions(results, "layers") + "): `StructuredConv2d` as it "
        "picks (`auto`) and forced to each method, against `nn.Conv2d` in the same memory "
        "format; page faults: minor faults per call (thousands), contiguous, `nn.Conv2d` / "
        "`auto`:",
        "",
        "| layer | conv ms | auto | pooled | composed | conv ms, channels-last "
        "| auto, channels-last | pooled, channels-last | auto picks | page faults |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["layers"]:
        base, base_cl = row["conv contiguous"], row["conv channels_last"]
        cells = [f"{base / row[f'{m} contiguous']:.2f}×" for m in METHODS]
        cells += [f"{base_cl:.1f}"]
        cells += [f"{base_cl / row[f'{m} channels_last']:.2f}×" for m in ("auto", "pooled")]
        cells += [row["picks"]]
        if "faults conv" in row:
            cells += [f"{row['faults conv'] / 1e3:.1f}k / {row['faults auto'] / 1e3:.1f}k"]
        else:
            cells += ["–"]
        lines.append(f"| {_layer_name(row)} | {base:.1f} | " + " | ".join(cells) + " |")
    return lines


def _model_table(results: Dict) -> List[str]:
    lines = [
        "**Whole ResNet-18 training step** (forward, backward, SGD; every 3×3 conv a "
        "`StructuredConv2d` with `c = C, n = 2`, as it picks and forced to each method; "
        + _conditions(results, "model")
        + "):",
        "",
        "| batch | input | original ms | auto ms | speedup | pooled | composed |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["model"]:
        base = row["original"]
        lines.append(
            f"| {row['batch']} | {row['size']}² | {base:.0f} | {row['auto']:.0f} | "
            f"{base / row['auto']:.2f}× | {base / row['pooled']:.2f}× | "
            f"{base / row['composed']:.2f}× |"
        )
    return lines


def _regularizer_table(results: Dict) -> List[str]:
    lines = [
        "**Regularizer on ResNet-18** (16 3×3 convs; forward + backward of the regularizer "
        "against a training step of the ordinary model; "
        + _conditions(results, "regularizer")
        + "):",
        "",
        "| plan | batch | step ms | regularizer ms (share of the step) | "
        "uncached per-layer `Structure.residual` ms (share) |",
        "|---|---|---|---|---|",
    ]
    for row in results["regularizer"]:
        step = row["step"]
        lines.append(
            f"| `{row['plan']}` | {row['batch']} | {step:.0f} | {row['regularizer']:.1f} "
            f"({100 * row['regularizer'] / step:.1f} %) | {row['Structure.residual']:.0f} "
            f"({100 * row['Structure.residual'] / step:.0f} %) |"
        )
    return lines


def _kernels_table(results: Dict) -> List[str]:
    lines = [
        "**Regularizer per kernel size** (one 256→256 conv at 14×14; regularizer forward + "
        "backward against the layer's forward + backward at batch 1, 8, 64; "
        + _conditions(results, "kernels")
        + "):",
        "",
        "| plan | regularizer ms | step ms, batch 1 / 8 / 64 | share at batch 1 / 8 / 64 |",
        "|---|---|---|---|",
    ]
    for row in results["kernels"]:
        steps = [row[f"step {b}"] for b in (1, 8, 64)]
        shares = " / ".join(f"{100 * row['regularizer'] / s:.0f} %" for s in steps)
        lines.append(
            f"| `{row['plan']}` | {row['regularizer']:.2f} | "
            + " / ".join(f"{s:.1f}" for s in steps)
            + f" | {shares} |"
        )
    return lines


def _linears_table(results: Dict) -> List[str]:
    lines = [
        "**Linear layers** (forward + backward, `StructuredLinear` with `c = C/2`, MAC ratio "
        "2×, as it picks and forced to each method, against `nn.Linear`; "
        + _conditions(results, "linear")
        + "):",
        "",
        "| layer | batch | linear ms | auto | pooled | composed |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["linear"]:
        base = row["linear"]
        cells = " | ".join(f"{base / row[m]:.2f}×" for m in METHODS)
        lines.append(f"| {row['in']}→{row['out']} | {row['batch']} | {base:.1f} | {cells} |")
    return lines


def _pieces_table(results: Dict) -> List[str]:
    lines = [
        f"**The pieces alone** (batch {results['batch']}, contiguous, no autograd; forward + "
        "input and weight gradients in one oneDNN backward call; *3×3*: `nn.Conv2d`'s convs; "
        "*2×2*: the convs with `alpha` on a ready `S`; *box*: forming `S` and the pool's "
        "adjoint; MAC ratio 2.25×; " + _conditions(results, "pieces") + "):",
        "",
        "| layer | 3×3 convs ms | 2×2 convs ms | ratio, convs alone | box ms | ratio, 2×2 + box |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["pieces"]:
        full, small, box = row["3x3 convs"], row["2x2 convs"], row["box"]
        lines.append(
            f"| {_layer_name(row)} | {full:.1f} | {small:.1f} | {full / small:.2f}× | "
            f"{box:.1f} | {full / (small + box):.2f}× |"
        )
    return lines


def markdown(results: Dict) -> str:
    """The tables of ``results`` in Markdown (those of the parts measured so far)."""
    lines = [
        f"torch {results['torch']}, {results['threads']} thread(s); each table: the minimum "
        "over its calls of each variant, the variants interleaved call by call in one "
        "process on a shared machine (ratios within one run; the load average before and "
        "after each table is given with it). Speedup = `nn.Conv2d` (`nn.Linear`) ms / "
        "variant ms, so > 1 is faster.",
    ]
    tables = {
        "layers": _layers_table,
        "model": _model_table,
        "regularizer": _regularizer_table,
        "kernels": _kernels_table,
        "linear": _linears_table,
        "pieces": _pieces_table,
    }
    for part, table in tables.items():
        if part in results:
            lines += ["", *table(results)]
    return "\n".join(lines) + "\n"


PARTS = ("layers", "model", "regularizer", "kernels", "linear", "pieces")


def run_part(part: str, args: argparse.Namespace) -> object:
    """The measurement ``part`` of :data:`PARTS`."""
    size = 64 if args.quick else 224
    if part == "layers":
        return layer_speed(args.batch, args.rounds)
    if part == "model":
        return [model_speed(8, size, args.rounds)]
    if part == "regularizer":
        return regularizer_cost((8, 64), size, max(3, args.rounds // 2))
    if part == "linear":
        return linear_speed(args.rounds)
    if part == "pieces":
        return conv_pieces(args.batch, args.rounds)
    return kernel_cost(args.rounds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="batch of the per-layer timings")
    parser.add_argument("--quick", action="store_true", help="small inputs (a smoke run)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)}; the others are kept from the "
        "previous results in --out",
    )
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.out / "training_speed.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update(torch=torch.__version__, threads=args.threads, batch=args.batch)
    for part in args.parts.split(","):
        if part not in PARTS:
            parser.error(f"unknown part {part!r}; choose from {PARTS}")
        before = os.getloadavg()[0]
        results[part] = run_part(part, args)
        results.setdefault("conditions", {})[part] = {
            "rounds": args.rounds,
            "load_before": before,
            "load_after": os.getloadavg()[0],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "training_speed.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
