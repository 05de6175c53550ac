"""Training speed of the structured layers and cost of the regularizer, ResNet-18, CPU.

Writes ``benchmarks/results/training_speed.{json,md}``; ``docs/experiments.md`` quotes them::

    nice -n 5 python benchmarks/training_speed.py            # a few minutes on 2 cores
    python benchmarks/training_speed.py --rounds 2 --quick   # smoke run

Every comparison is timed inside one process, the variants interleaved (A, B, A, B …), with
``torch.set_num_threads(--threads)``; the tables give medians and ratios. Three measurements:

1. Each 3×3 conv shape of ResNet-18 (batch 32, fp32, forward + backward): ``nn.Conv2d``
   against ``StructuredConv2d`` (``c = C, n = 2``), contiguous and channels-last, and the
   previous pooled path (pad, ``avg_pool2d`` box sum, 2×2 conv) for reference.
2. A whole ResNet-18 training step (forward, backward, SGD), original against every 3×3 conv
   structured (``StructuredConv2d``).
3. The regularizer (forward + backward) against a ResNet-18 training step at batch 8 and 64,
   the cached one against ``Structure.residual`` per layer; and per kernel size.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from paper_questions import alternating_medians, training_step  # benchmarks/ is sys.path[0]

from tvm_structconv.models import create_model
from tvm_structconv.nn import StructuralRegularizer, StructuredConv2d, structurize
from tvm_structconv.plan import Plan

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ((64, 56), (128, 28), (256, 14), (512, 7))


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    upstream = torch.randn_like(layer(x))

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(upstream)

    return step


class _AvgPoolPath(nn.Module):
    """The previous pooled path: ``F.pad``, ``avg_pool2d`` box sum × 4, 2×2 conv."""

    def __init__(self, layer: StructuredConv2d) -> None:
        super().__init__()
        self.alpha = layer.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1))
        return F.conv2d(F.avg_pool2d(padded, 2, stride=1) * 4.0, self.alpha)


def layer_speed(batch: int, rounds: int) -> List[Dict[str, float]]:
    """(1) forward + backward of every ResNet-18 3×3 conv shape, original vs structured."""
    rows = []
    for channels, size in LAYERS:
        torch.manual_seed(0)
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        structured = StructuredConv2d.from_conv(conv, channels, 2)
        variants: Dict[str, Callable[[], None]] = {}
        for layout in ("contiguous", "channels_last"):
            form = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(batch, channels, size, size).to(memory_format=form)
            x.requires_grad_()
            for name, layer in (("conv", conv), ("structured", structured)):
                variants[f"{name} {layout}"] = _forward_backward(layer.to(memory_format=form), x)
            if layout == "contiguous":
                variants["avg_pool path"] = _forward_backward(_AvgPoolPath(structured), x)
        medians = alternating_medians(variants, rounds)
        rows.append({"channels": channels, "size": size, **medians})
        print(f"layer {channels}@{size}: {medians}", flush=True)
    return rows


def model_speed(batch: int, size: int, rounds: int) -> Dict[str, float]:
    """(2) a ResNet-18 training step, original vs every 3×3 conv a StructuredConv2d."""
    torch.manual_seed(0)
    original = create_model("resnet18")
    structured, _ = structurize(original, Plan.parse("3x3:c=C,n=2"), replace=True)
    image = (3, size, size)
    medians = alternating_medians(
        {
            "original": training_step(original, batch, image_shape=image),
            "structured": training_step(structured, batch, image_shape=image),
        },
        rounds,
    )
    print(f"model batch {batch}: {medians}", flush=True)
    return {"batch": batch, "size": size, **medians}


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
            medians = alternating_medians(
                {
                    "step": training_step(model, batch, image_shape=(3, size, size)),
                    "regularizer": cached,
                    "Structure.residual": per_layer,
                },
                rounds,
            )
            rows.append({"plan": plan_text, "batch": batch, "size": size, **medians})
            print(f"regularizer {plan_text} batch {batch}: {medians}", flush=True)
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
            medians = alternating_medians({"regularizer": alone, **steps}, rounds)
            rows.append({"plan": plan_text, **medians})
            print(f"kernel {plan_text}: {medians}", flush=True)
    return rows


def markdown(results: Dict) -> str:
    lines = [
        f"torch {results['torch']}, {results['threads']} thread(s), medians of "
        f"{results['rounds']} interleaved rounds on a shared machine (ratios within one run).",
        "",
        f"**Per layer** (batch {results['batch']}, forward + backward; speedup = "
        "`nn.Conv2d` ms / variant ms, contiguous conv as the base unless marked):",
        "",
        "| layer | conv ms | StructuredConv2d | avg_pool path (before) | conv, channels-last "
        "| StructuredConv2d, channels-last (vs conv channels-last) | MAC ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["layers"]:
        base, base_cl = row["conv contiguous"], row["conv channels_last"]
        lines.append(
            f"| {row['channels']}@{row['size']} | {base:.1f} | "
            f"{base / row['structured contiguous']:.2f}× | {base / row['avg_pool path']:.2f}× | "
            f"{base / base_cl:.2f}× | {base / row['structured channels_last']:.2f}× "
            f"({base_cl / row['structured channels_last']:.2f}×) | 2.25× |"
        )
    lines += [
        "",
        "**Whole ResNet-18 training step** (forward, backward, SGD; every 3×3 conv a "
        "`StructuredConv2d` with `c = C, n = 2`):",
        "",
        "| batch | input | original ms | structured ms | speedup |",
        "|---|---|---|---|---|",
    ]
    for row in results["model"]:
        lines.append(
            f"| {row['batch']} | {row['size']}² | {row['original']:.0f} | "
            f"{row['structured']:.0f} | {row['original'] / row['structured']:.2f}× |"
        )
    lines += [
        "",
        "**Regularizer on ResNet-18** (16 3×3 convs; forward + backward of the regularizer "
        "against a training step of the ordinary model):",
        "",
        "| plan | batch | step ms | regularizer ms (share of the step) | "
        "per-layer `Structure.residual` ms (share) |",
        "|---|---|---|---|---|",
    ]
    for row in results["regularizer"]:
        step = row["step"]
        lines.append(
            f"| `{row['plan']}` | {row['batch']} | {step:.0f} | {row['regularizer']:.1f} "
            f"({100 * row['regularizer'] / step:.1f} %) | {row['Structure.residual']:.0f} "
            f"({100 * row['Structure.residual'] / step:.0f} %) |"
        )
    lines += [
        "",
        "**Regularizer per kernel size** (one 256→256 conv at 14×14; regularizer forward + "
        "backward against the layer's forward + backward at batch 1, 8, 64):",
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
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="batch of the per-layer timings")
    parser.add_argument("--quick", action="store_true", help="small inputs (a smoke run)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = 64 if args.quick else 224
    results = {
        "torch": torch.__version__,
        "threads": args.threads,
        "rounds": args.rounds,
        "batch": args.batch,
        "layers": layer_speed(args.batch, args.rounds),
        "model": [model_speed(8, size, args.rounds)],
        "regularizer": regularizer_cost((8, 64), size, max(3, args.rounds // 2)),
        "kernels": kernel_cost(args.rounds),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_speed.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (args.out / "training_speed.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
