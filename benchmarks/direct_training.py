"""Direct training of ``alpha`` against regularize + decompose, on generated 32×32 digits.

Writes ``benchmarks/results/direct_training.{json,md}``; ``docs/experiments.md`` quotes them::

    nice -n 15 python benchmarks/direct_training.py                # 5 seeds, both plans
    python benchmarks/direct_training.py --seeds 1 --epochs 1      # smoke run

Per seed (which fixes the data, the initialization and the batch order of every variant) and
plan, the small CNN is trained three ways on the same budget: (1) two-step: ordinary convs
with the structural regularizer (λ = 1), then projected (``structurize``) and BatchNorm
re-estimated; (2) direct: ``StructuredConv2d`` trained from scratch with plain SGD; (3)
direct with ``precondition_alpha_gradients`` (SGD on ``alpha`` made the projected SGD step
on the composed kernel). ``--scaled-lr`` adds ``structured_parameter_groups`` to (2) and (3).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from paper_questions import with_fresh_structured_layers  # benchmarks/ is sys.path[0]

from tvm_structconv.nn import (
    StructuralRegularizer,
    precondition_alpha_gradients,
    structured_parameter_groups,
    structurize,
)
from tvm_structconv.nn.synthetic import distorted_digits
from tvm_structconv.plan import Plan

ROOT = pathlib.Path(__file__).resolve().parent.parent
WIDTHS = (16, 32, 64, 64)
PLANS = ("3x3:c=C/2,n=2", "3x3:c=C/2,n=3")
VARIANTS = ("two-step", "direct", "direct, preconditioned")


def small_cnn(widths: Sequence[int] = WIDTHS) -> nn.Sequential:
    """Conv(3×3)-BN-ReLU ×4, 2×2 max-pool after the first two, global average pool, linear."""
    layers: List[nn.Module] = []
    channels = 1
    for index, width in enumerate(widths):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        if index < 2:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers)


def train(
    model: nn.Module,
    data: Dict[str, torch.Tensor],
    epochs: int,
    seed: int,
    regularizer: Optional[StructuralRegularizer] = None,
    scaled: bool = False,
    preconditioned: bool = False,
) -> nn.Module:
    """SGD, Nesterov momentum 0.9, weight decay 5e-4, one-cycle LR up to 0.1, batch 64."""
    lr, decay, batch_size = 0.1, 5e-4, 64
    if scaled:
        groups = structured_parameter_groups(model, lr, decay)
    else:
        groups = [{"params": list(model.parameters()), "lr": lr, "weight_decay": decay}]
    if preconditioned:
        precondition_alpha_gradients(model)
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    steps = math.ceil(len(data["train_y"]) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [group["lr"] for group in groups], total_steps=epochs * steps
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data["train_y"]), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(data["train_x"][batch]), data["train_y"][batch])
            if regularizer is not None:
                loss = loss + regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data: Dict[str, torch.Tensor]) -> float:
    model.eval()
    return float((model(data["test_x"]).argmax(1) == data["test_y"]).float().mean())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dict[str, torch.Tensor]) -> nn.Module:
    """BatchNorm statistics re-estimated with one pass over the training images."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for start in range(0, len(data["train_x"]), 256):
        model(data["train_x"][start : start + 256])
    return model.eval()


def run_seed(
    plan_text: str, seed: int, epochs: int, train_size: int, scaled: bool = False
) -> Dict[str, float]:
    """The three variants' test accuracies for one plan and seed."""
    train_x, train_y = distorted_digits(train_size, seed=2 * seed)
    test_x, test_y = distorted_digits(2000, seed=2 * seed + 1)
    data = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    plan = Plan.parse(plan_text)
    torch.manual_seed(seed)
    model = small_cnn()
    train(model, data, epochs, seed, StructuralRegularizer(model, plan, 1.0))
    structured, _ = structurize(model, plan)
    results = {"two-step": accuracy(recalibrate_batchnorm(structured, data), data)}
    for variant, preconditioned in (("direct", False), ("direct, preconditioned", True)):
        torch.manual_seed(seed)
        model = with_fresh_structured_layers(small_cnn(), plan)
        model = train(model, data, epochs, seed, scaled=scaled, preconditioned=preconditioned)
        results[variant] = accuracy(model, data)
    return results


def mean_se(values: Sequence[float]) -> str:
    array = 100 * np.asarray(values, dtype=np.float64)
    se = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else 0.0
    return f"{array.mean():.1f} ± {se:.1f}"


def markdown(results: Dict[str, List[Dict[str, float]]], header: str) -> str:
    lines = [
        header,
        "",
        "| plan | " + " | ".join(f"{v} %" for v in VARIANTS) + " | direct − two-step "
        "| direct, preconditioned − two-step |",
        "|---" * (len(VARIANTS) + 3) + "|",
    ]
    for plan_text, runs in results.items():
        cells = [mean_se([run[v] for run in runs]) for v in VARIANTS]
        for variant in VARIANTS[1:]:
            cells.append(mean_se([run[variant] - run["two-step"] for run in runs]))
        lines.append(f"| `{plan_text}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--plans", nargs="+", default=list(PLANS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scaled-lr", action="store_true", help="structured_parameter_groups")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: Dict[str, List[Dict[str, float]]] = {}
    for plan_text in args.plans:
        for seed in range(args.seeds):
            results.setdefault(plan_text, []).append(
                run_seed(plan_text, seed, args.epochs, args.train_size, args.scaled_lr)
            )
            print(plan_text, seed, results[plan_text][-1], flush=True)
    minutes = (time.perf_counter() - start) / 60
    header = (
        f"Generated 32×32 digits (`tvm_structconv.nn.synthetic.distorted_digits`), "
        f"{args.train_size} training / 2000 test images per seed, {args.epochs} epochs, "
        f"{args.seeds} seeds; test accuracy, mean ± s.e. over seeds (differences paired). "
        f"{minutes:.0f} min, torch {torch.__version__}, {args.threads} thread(s)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "direct_training.json").write_text(
        json.dumps({"config": vars(args) | {"out": str(args.out)}, "results": results}, indent=1)
    )
    (args.out / "direct_training.md").write_text(markdown(results, header), encoding="utf-8")
    print(markdown(results, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
