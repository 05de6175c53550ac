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
import dataclasses
import json
import pathlib
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
from paper_questions import (  # benchmarks/ is sys.path[0]
    FULL,
    Split,
    accuracy,
    pm,
    recalibrate_batchnorm,
    small_cnn,
    train,
    with_fresh_structured_layers,
)

from tvm_structconv.nn import (
    StructuralRegularizer,
    precondition_alpha_gradients,
    structured_parameter_groups,
    structurize,
)
from tvm_structconv.nn.synthetic import distorted_digits
from tvm_structconv.plan import Plan

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLANS = ("3x3:c=C/2,n=2", "3x3:c=C/2,n=3")
VARIANTS = ("two-step", "direct", "direct, preconditioned")
#: The 32×32 images are max-pooled after the first two conv blocks (the 8×8 digits once).
POOL_AFTER = (0, 1)


def run_seed(
    plan_text: str, seed: int, epochs: int, train_size: int, scaled: bool = False
) -> Dict[str, float]:
    """The three variants' test accuracies for one plan and seed.

    Every variant trains with ``paper_questions.train`` (SGD, Nesterov momentum 0.9, weight
    decay 5e-4, one-cycle LR up to 0.1, batch 64) for ``epochs`` epochs.
    """
    train_x, train_y = distorted_digits(train_size, seed=2 * seed)
    test_x, test_y = distorted_digits(2000, seed=2 * seed + 1)
    split = Split(train_x, train_y, test_x, test_y)
    config = dataclasses.replace(FULL, epochs=epochs)
    plan = Plan.parse(plan_text)
    torch.manual_seed(seed)
    model = small_cnn(pool_after=POOL_AFTER)
    regularizer = StructuralRegularizer(model, plan, 1.0)
    train(model, split, config, seed, f"two-step s{seed}", regularizer)
    structured, _ = structurize(model, plan)
    results = {"two-step": accuracy(recalibrate_batchnorm(structured, split), split)}
    for variant, preconditioned in (("direct", False), ("direct, preconditioned", True)):
        torch.manual_seed(seed)
        model = with_fresh_structured_layers(small_cnn(pool_after=POOL_AFTER), plan)
        if preconditioned:
            precondition_alpha_gradients(model)
        groups = structured_parameter_groups(model, config.max_lr, 5e-4) if scaled else None
        train(model, split, config, seed, f"{variant} s{seed}", param_groups=groups)
        results[variant] = accuracy(model, split)
    return results


def markdown(results: Dict[str, List[Dict[str, float]]], header: str) -> str:
    lines = [
        header,
        "",
        "| plan | " + " | ".join(f"{v} %" for v in VARIANTS) + " | direct − two-step "
        "| direct, preconditioned − two-step |",
        "|---" * (len(VARIANTS) + 3) + "|",
    ]
    for plan_text, runs in results.items():
        cells = [pm([run[v] for run in runs]) for v in VARIANTS]
        for variant in VARIANTS[1:]:
            cells.append(pm([run[variant] - run["two-step"] for run in runs]))
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
