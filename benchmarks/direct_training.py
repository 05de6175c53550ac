"""Direct training of ``alpha`` against regularize + decompose, on generated 32×32 digits.

Writes ``benchmarks/results/direct_training.{json,md}``; ``docs/experiments.md`` quotes them::

    nice -n 15 python benchmarks/direct_training.py                # 5 seeds, both plans
    python benchmarks/direct_training.py --seeds 1 --epochs 1      # smoke run

Per seed (which fixes the data, the initialization and the batch order of every variant) and
plan, the small CNN is trained on the same budget: (1) two-step: ordinary convs with the
structural regularizer (λ = 1), then projected (``structurize``) and BatchNorm re-estimated;
then ``StructuredConv2d`` trained from scratch: (2) with the ``"pooled"`` init (the layer's
default before issue 17) and plain SGD; (3) the same with ``precondition_alpha_gradients``
(SGD on ``alpha`` made the projected SGD step on the composed kernel); (4) the ``"projected"``
init (``alpha = A⁺ W₀``, the projection of an ordinary layer's kernel; the default now) with
plain SGD; (5) the ``"projected"`` init with preconditioning, the fix of issue 17 item 3; (6)
the ``"matched"`` init (the projection rescaled to the ordinary kernel's norm) with
preconditioning.
``--variants`` picks some of them; ``--scaled-lr`` adds ``structured_parameter_groups`` to
the direct variants. The tables are rewritten after every seed.
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
#: Direct variants: name -> (``StructuredConv2d`` init, preconditioned).
DIRECT = {
    "direct, pooled init": ("pooled", False),
    "direct, pooled init, preconditioned": ("pooled", True),
    "direct, projected init": ("projected", False),
    "direct, projected init, preconditioned": ("projected", True),
    "direct, matched init, preconditioned": ("matched", True),
}
VARIANTS = ("two-step", *DIRECT)
#: The 32×32 images are max-pooled after the first two conv blocks (the 8×8 digits once).
POOL_AFTER = (0, 1)


def run_seed(
    plan_text: str,
    seed: int,
    epochs: int,
    train_size: int,
    scaled: bool = False,
    variants: Sequence[str] = VARIANTS,
) -> Dict[str, float]:
    """The test accuracies of ``variants`` for one plan and seed.

    Every variant trains with ``paper_questions.train`` (SGD, Nesterov momentum 0.9, weight
    decay 5e-4, one-cycle LR up to 0.1, batch 64) for ``epochs`` epochs.
    """
    train_x, train_y = distorted_digits(train_size, seed=2 * seed)
    test_x, test_y = distorted_digits(2000, seed=2 * seed + 1)
    split = Split(train_x, train_y, test_x, test_y)
    config = dataclasses.replace(FULL, epochs=epochs)
    plan = Plan.parse(plan_text)
    results = {}
    if "two-step" in variants:
        torch.manual_seed(seed)
        model = small_cnn(pool_after=POOL_AFTER)
        regularizer = StructuralRegularizer(model, plan, 1.0)
        train(model, split, config, seed, f"two-step s{seed}", regularizer)
        structured, _ = structurize(model, plan)
        results["two-step"] = accuracy(recalibrate_batchnorm(structured, split), split)
    for variant, (init, preconditioned) in DIRECT.items():
        if variant not in variants:
            continue
        torch.manual_seed(seed)
        model = with_fresh_structured_layers(small_cnn(pool_after=POOL_AFTER), plan, init)
        if preconditioned:
            precondition_alpha_gradients(model)
        groups = structured_parameter_groups(model, config.max_lr, 5e-4) if scaled else None
        train(model, split, config, seed, f"{variant} s{seed}", param_groups=groups)
        results[variant] = accuracy(model, split)
    return results


def markdown(results: Dict[str, List[Dict[str, float]]], header: str) -> str:
    """One row per plan and variant: accuracy and the paired difference to two-step."""
    lines = [
        header,
        "",
        "| plan | variant | seeds | test accuracy % | − two-step, paired (points) |",
        "|---|---|---|---|---|",
    ]
    for plan_text, runs in results.items():
        for variant in VARIANTS:
            values = [run[variant] for run in runs if variant in run]
            if not values:
                continue
            paired = [
                run[variant] - run["two-step"]
                for run in runs
                if variant in run and "two-step" in run
            ]
            difference = pm(paired) if variant != "two-step" and paired else ""
            lines.append(
                f"| `{plan_text}` | {variant} | {len(values)} | {pm(values)} | {difference} |"
            )
    return "\n".join(lines) + "\n"


def write(
    results: Dict[str, List[Dict[str, float]]], args: argparse.Namespace, minutes: float
) -> str:
    """Write ``direct_training.{json,md}`` under ``args.out``; return the markdown."""
    seeds = sorted({len(runs) for runs in results.values()})
    header = (
        f"Generated 32×32 digits (`tvm_structconv.nn.synthetic.distorted_digits`), "
        f"{args.train_size} training / 2000 test images per seed, {args.epochs} epochs, "
        f"{'/'.join(map(str, seeds))} of {args.seeds} seeds; test accuracy, mean ± s.e. over "
        f"seeds (differences paired). {minutes:.0f} min"
        f"{' (this invocation, which added variants with --update)' if args.update else ''}, "
        f"torch {torch.__version__}, {args.threads} thread(s)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
    (args.out / "direct_training.json").write_text(
        json.dumps({"config": config, "results": results}, indent=1)
    )
    text = markdown(results, header)
    (args.out / "direct_training.md").write_text(text, encoding="utf-8")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--plans", nargs="+", default=list(PLANS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scaled-lr", action="store_true", help="structured_parameter_groups")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--update",
        action="store_true",
        help="add these variants' accuracies to the same seeds of the existing "
        "direct_training.json (same epochs and training size) instead of starting afresh",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    previous: Dict[str, List[Dict[str, float]]] = {}
    if args.update:
        stored = json.loads((args.out / "direct_training.json").read_text())
        for key in ("epochs", "train_size", "scaled_lr"):
            if stored["config"][key] != getattr(args, key):
                parser.error(f"--update: the stored run has {key}={stored['config'][key]}")
        previous = stored["results"]
    results: Dict[str, List[Dict[str, float]]] = {}
    for seed in range(args.seeds):
        for plan_text in args.plans:
            run = run_seed(
                plan_text, seed, args.epochs, args.train_size, args.scaled_lr, args.variants
            )
            if seed < len(previous.get(plan_text, [])):
                run = {**previous[plan_text][seed], **run}
            results.setdefault(plan_text, []).append(run)
            print(plan_text, seed, run, flush=True)
        text = write(results, args, (time.perf_counter() - start) / 60)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
