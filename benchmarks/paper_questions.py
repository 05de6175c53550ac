"""The paper's open training questions, measured on scikit-learn's digits.

Regenerates ``docs/experiments.md`` and the PNG plots beside it::

    python benchmarks/paper_questions.py            # full run, a few minutes on 2 cores
    python benchmarks/paper_questions.py --quick    # smoke run, written to a temporary folder

Experiments
-----------
(a) Variants of one small CNN (3×3 convs): baseline; structural regularization (step 1);
    decomposition (step 2), with and without re-estimating BatchNorm statistics; direct
    training of ``alpha``; a plain model with 2×2 kernels and the same parameter count.
(b) Accuracy against the regularization strength ``λ`` and against the compression ``(c, n)``.
(c) Cost of the regularizer per training step against batch and kernel size, the Kronecker
    residual against a dense projector, and the regularizer of a whole ResNet-18.
(d) How well structured kernels approximate fixed 3×3 filters (Laplacian, Sobel, Gaussian …).

Accuracies are mean ± standard error over seeds; a seed fixes the train/test split, the
initialization and the batch order, and every variant of a seed shares them (paired).
"""

from __future__ import annotations

import argparse
import copy
import math
import pathlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tvm_structconv.models import model_cost
from tvm_structconv.nn import StructuralRegularizer, StructuredConv2d, structurize
from tvm_structconv.plan import Plan
from tvm_structconv.structure import Structure, banded_ones

Item = TypeVar("Item")

ROOT = pathlib.Path(__file__).resolve().parent.parent
WIDTHS = (16, 32, 64, 64)
IMAGE_SHAPE = (1, 1, 8, 8)
MAIN_PLAN = "3x3:c=C,n=2"
FIXED_KERNELS: Dict[str, List[List[float]]] = {
    "Laplacian (4-neighbour)": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "Laplacian (8-neighbour)": [[1, 1, 1], [1, -8, 1], [1, 1, 1]],
    "Sobel x": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "Scharr x": [[3, 0, -3], [10, 0, -10], [3, 0, -3]],
    "Prewitt x": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "Gaussian (binomial)": [[1, 2, 1], [2, 4, 2], [1, 2, 1]],
    "Box": [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
    "Sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "Identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
}
FIXED_REDUCED_SIZES = ((1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2))


@dataclass(frozen=True)
class Config:
    """What one run of the script measures."""

    seeds: int
    sweep_seeds: int
    epochs: int
    strength: float
    strengths: Tuple[float, ...]
    plans: Tuple[str, ...]
    batch_sizes: Tuple[int, ...]
    kernel_sizes: Tuple[int, ...]
    timing_steps: int
    dense_channels: Tuple[int, ...]
    batch_size: int = 64
    max_lr: float = 0.1


FULL = Config(
    seeds=5,
    sweep_seeds=3,
    epochs=25,
    strength=1.0,
    strengths=(0.03, 0.1, 0.3, 1.0, 3.0),
    plans=(MAIN_PLAN, "3x3:c=C/2,n=3", "3x3:c=C/2,n=2", "3x3:c=C/4,n=2", "3x3:c=C/2,n=1"),
    batch_sizes=(16, 64, 256),
    kernel_sizes=(3, 5, 7),
    timing_steps=20,
    dense_channels=(64, 128, 256, 512),
)
QUICK = Config(
    seeds=2,
    sweep_seeds=2,
    epochs=2,
    strength=1.0,
    strengths=(0.1, 1.0),
    plans=(MAIN_PLAN, "3x3:c=C/2,n=2"),
    batch_sizes=(16, 64),
    kernel_sizes=(3, 5),
    timing_steps=3,
    dense_channels=(64, 128),
)


# --------------------------------------------------------------------- progress and statistics
def progress(iterable: Iterable[Item], total: int, desc: str) -> Iterator[Item]:
    """A tqdm bar when tqdm is installed, else a progress count printed on one line."""
    try:
        from tqdm import tqdm
    except ImportError:
        for index, item in enumerate(iterable, 1):
            yield item
            print(f"\r{desc}: {index}/{total}", end="\n" if index == total else "", flush=True)
        return
    yield from tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def mean_se(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and standard error of the mean (``std(ddof=1) / √n``; 0 for one value)."""
    array = np.asarray(values, dtype=np.float64)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else 0.0
    return float(array.mean()), se


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± se`` of ``values × scale`` as text."""
    mean, se = mean_se([v * scale for v in values])
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def verdict(differences: Sequence[float]) -> str:
    """Whether paired differences are distinguishable from zero (|mean| > 2 SE)."""
    mean, se = mean_se(differences)
    if abs(mean) <= 2 * se or mean == 0:
        return "within noise"
    return "higher" if mean > 0 else "lower"


# --------------------------------------------------------------------- data and models
@dataclass(frozen=True)
class Split:
    """One stratified 75/25 split of the digits, pixels scaled to [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_split(seed: int) -> Split:
    """The digits (1,797 images of 8×8, 10 classes) split by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=0.25, stratify=digits.target, random_state=seed
    )
    return Split(images[train], labels[train], images[test], labels[test])


def small_cnn(
    kernel_size: int = 3, widths: Sequence[int] = WIDTHS, pool_after: Sequence[int] = (1,)
) -> nn.Sequential:
    """Conv-BN-ReLU ×4, global average pool, linear.

    A 2×2 max-pool follows the conv blocks numbered in ``pool_after`` (from 0): the second
    for the 8×8 digits, the first two for 32×32 images.
    """
    layers: List[nn.Module] = []
    channels = 1
    padding = "same" if kernel_size % 2 == 0 else kernel_size // 2
    for index, width in enumerate(widths):
        layers += [
            nn.Conv2d(channels, width, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        if index in pool_after:
            layers.append(nn.MaxPool2d(2))
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers)


def with_fresh_structured_layers(
    model: nn.Sequential, plan: Plan, init: str = "projected"
) -> nn.Sequential:
    """``model`` with every planned conv replaced by a freshly initialized StructuredConv2d
    (``init`` as in :class:`~tvm_structconv.nn.StructuredConv2d`)."""
    for name, structure in plan.apply(model).items():
        conv = model.get_submodule(name)
        model[int(name)] = StructuredConv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            structure.reduced_channels,
            structure.reduced_kernel_size,
            padding=conv.padding,
            bias=conv.bias is not None,
            init=init,
        )
    return model


def parameter_count(model: nn.Module) -> int:
    """All parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


# --------------------------------------------------------------------- training and evaluation
def train(
    model: nn.Module,
    split: Split,
    config: Config,
    seed: int,
    desc: str,
    regularizer: Optional[StructuralRegularizer] = None,
    param_groups: Optional[List[dict]] = None,
) -> nn.Module:
    """SGD (Nesterov momentum, weight decay 5e-4, one-cycle LR) on the training split.

    ``param_groups`` (optimizer groups with their own ``lr`` and ``weight_decay``, e.g.
    :func:`tvm_structconv.nn.structured_parameter_groups`) replace the one group of all
    parameters at ``config.max_lr``; each group's one-cycle schedule peaks at its own ``lr``.
    """
    generator = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(split.train_y) / config.batch_size)
    if param_groups is None:
        param_groups = [
            {"params": list(model.parameters()), "lr": config.max_lr, "weight_decay": 5e-4}
        ]
    optimizer = torch.optim.SGD(param_groups, lr=config.max_lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [group["lr"] for group in param_groups], total_steps=config.epochs * steps
    )
    model.train()
    for _ in progress(range(config.epochs), config.epochs, desc):
        order = torch.randperm(len(split.train_y), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = F.cross_entropy(model(split.train_x[batch]), split.train_y[batch])
            if regularizer is not None:
                loss = loss + regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def warm_up(split: Split) -> None:
    """One epoch of each kind of run, so the first timed run pays no start-up cost."""
    plan = Plan.parse("3x3:c=C/2,n=2")
    config = Config(**{**QUICK.__dict__, "epochs": 1})
    regularized = small_cnn()
    train(regularized, split, config, 0, "warm-up", StructuralRegularizer(regularized, plan))
    for model in (small_cnn(2), with_fresh_structured_layers(small_cnn(), plan)):
        train(model, split, config, 0, "warm-up")


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy on the test split (eval mode)."""
    model.eval()
    return float((model(split.test_x).argmax(1) == split.test_y).float().mean())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, split: Split) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on the training split.

    Projecting the kernels (step 2) changes the conv outputs that BatchNorm normalizes; one
    pass over the training images, without gradients or labels, re-estimates the statistics.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    for start in range(0, len(split.train_x), 256):
        model(split.train_x[start : start + 256])
    return model.eval()


@dataclass(frozen=True)
class RegularizedRun:
    """Accuracy after step 1 and step 2 of one seed, and the residual left by step 1."""

    step1: float
    step2: float
    step2_recalibrated: float
    residual: float


class Runner:
    """Trains the variants, caching every run so that the experiments share them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._splits: Dict[int, Split] = {}
        self._baselines: Dict[int, nn.Module] = {}
        self._regularized: Dict[Tuple[str, float, int], RegularizedRun] = {}
        self._accuracies: Dict[Tuple[str, int], float] = {}

    def split(self, seed: int) -> Split:
        """The train/test split of ``seed``."""
        if seed not in self._splits:
            self._splits[seed] = load_split(seed)
        return self._splits[seed]

    def baseline(self, seed: int) -> nn.Module:
        """The small CNN trained without regularizer."""
        if seed not in self._baselines:
            torch.manual_seed(seed)
            self._baselines[seed] = train(
                small_cnn(), self.split(seed), self.config, seed, f"baseline s{seed}"
            )
        return self._baselines[seed]

    def regularized(self, plan_text: str, strength: float, seed: int) -> RegularizedRun:
        """Step 1 with ``λ = strength`` (0: the baseline), then step 2 onto ``plan_text``."""
        key = (plan_text, strength, seed)
        if key not in self._regularized:
            if strength == 0:
                model = self.baseline(seed)
            else:
                torch.manual_seed(seed)
                model = small_cnn()
                regularizer = StructuralRegularizer(model, Plan.parse(plan_text), strength)
                train(
                    model,
                    self.split(seed),
                    self.config,
                    seed,
                    f"λ={strength:g} {plan_text} s{seed}",
                    regularizer,
                )
            self._regularized[key] = self._decompose(model, plan_text, seed)
        return self._regularized[key]

    def direct(self, plan_text: str, seed: int) -> float:
        """Accuracy of the model trained through ``alpha`` (StructuredConv2d) from scratch."""
        key = (plan_text, seed)
        if key not in self._accuracies:
            torch.manual_seed(seed)
            model = with_fresh_structured_layers(small_cnn(), Plan.parse(plan_text))
            train(model, self.split(seed), self.config, seed, f"direct {plan_text} s{seed}")
            self._accuracies[key] = accuracy(model, self.split(seed))
        return self._accuracies[key]

    def plain(self, kernel_size: int, seed: int) -> float:
        """Accuracy of the ordinary model with ``kernel_size`` kernels."""
        key = (f"plain {kernel_size}", seed)
        if key not in self._accuracies:
            torch.manual_seed(seed)
            model = train(
                small_cnn(kernel_size),
                self.split(seed),
                self.config,
                seed,
                f"plain {kernel_size}x{kernel_size} s{seed}",
            )
            self._accuracies[key] = accuracy(model, self.split(seed))
        return self._accuracies[key]

    def _decompose(self, model: nn.Module, plan_text: str, seed: int) -> RegularizedRun:
        split = self.split(seed)
        plan = Plan.parse(plan_text)
        residuals = StructuralRegularizer(model, plan).residuals().values()
        structured, _ = structurize(model, plan)
        return RegularizedRun(
            step1=accuracy(model, split),
            step2=accuracy(structured, split),
            step2_recalibrated=accuracy(recalibrate_batchnorm(structured, split), split),
            residual=float(np.mean([value.item() for value in residuals])),
        )


# --------------------------------------------------------------------- (a) and (b)
@dataclass
class Table:
    """A markdown table and the raw numbers behind it (for plots and text)."""

    header: List[str]
    rows: List[List[str]] = field(default_factory=list)
    data: Dict[str, object] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def structured_cost(plan_text: str) -> Tuple[int, int, int, int]:
    """(original MACs, structured MACs, original params, structured params) of the small CNN."""
    model = small_cnn()
    structures = {f"{name}.weight": s for name, s in Plan.parse(plan_text).apply(model).items()}
    cost = model_cost(model, structures, IMAGE_SHAPE)
    return cost.original_macs, cost.structured_macs, cost.original_params, cost.structured_params


def experiment_variants(runner: Runner) -> Table:
    """(a) baseline, step 1, step 2, direct, 2×2 — one plan, every seed."""
    config = runner.config
    seeds = range(config.seeds)
    runs = [runner.regularized(MAIN_PLAN, config.strength, seed) for seed in seeds]
    projected = [runner.regularized(MAIN_PLAN, 0.0, seed) for seed in seeds]
    baseline = [run.step1 for run in projected]
    direct = [runner.direct(MAIN_PLAN, seed) for seed in seeds]
    plain2 = [runner.plain(2, seed) for seed in seeds]
    macs, structured_macs, params, structured_params = structured_cost(MAIN_PLAN)
    two = small_cnn(2)
    two_macs = model_cost(two, {}, IMAGE_SHAPE).original_macs
    columns = {
        "baseline": baseline,
        "baseline projected": [run.step2 for run in projected],
        "baseline projected + BN": [run.step2_recalibrated for run in projected],
        "step 1": [run.step1 for run in runs],
        "step 2": [run.step2 for run in runs],
        "step 2 + BN": [run.step2_recalibrated for run in runs],
        "direct": direct,
        "plain 2x2": plain2,
    }
    table = Table(["model", "params", "MACs", "test accuracy %", "vs step 2 (paired, points)"])
    rows = [
        ("Baseline, 3×3, no regularizer", "baseline", params, macs),
        (
            "Baseline projected (step 2 without step 1)",
            "baseline projected",
            structured_params,
            structured_macs,
        ),
        (
            "… + BatchNorm re-estimated",
            "baseline projected + BN",
            structured_params,
            structured_macs,
        ),
        (f"Step 1: regularized, λ = {config.strength:g}", "step 1", params, macs),
        ("Step 2: decomposed (projected)", "step 2", structured_params, structured_macs),
        ("… + BatchNorm re-estimated", "step 2 + BN", structured_params, structured_macs),
        ("Direct training of α (StructuredConv2d)", "direct", structured_params, structured_macs),
        ("Plain 2×2 kernels, same widths", "plain 2x2", parameter_count(two), two_macs),
    ]
    step2 = columns["step 2"]
    for label, key, count, mac in rows:
        differences = [a - b for a, b in zip(columns[key], step2)]
        paired = "—" if key == "step 2" else pm(differences)
        table.rows.append([label, f"{count:,}", f"{mac:,}", pm(columns[key]), paired])
    table.data = {"columns": columns}
    return table


def experiment_strength(runner: Runner) -> Table:
    """(b) accuracy after step 1 and step 2 against ``λ`` (λ = 0: the baseline projected)."""
    seeds = range(runner.config.sweep_seeds)
    table = Table(["λ", "step 1 %", "step 2 %", "step 2 + BN %", "mean residual r(W)"])
    curves: Dict[float, List[RegularizedRun]] = {}
    for strength in (0.0,) + runner.config.strengths:
        runs = [runner.regularized(MAIN_PLAN, strength, seed) for seed in seeds]
        curves[strength] = runs
        table.rows.append(
            [
                f"{strength:g}",
                pm([r.step1 for r in runs]),
                pm([r.step2 for r in runs]),
                pm([r.step2_recalibrated for r in runs]),
                pm([r.residual for r in runs], 1.0, 4),
            ]
        )
    table.data = {"curves": curves}
    return table


def experiment_compression(runner: Runner) -> Table:
    """(b) regularize + decompose against direct training for several ``(c, n)``."""
    config = runner.config
    seeds = range(config.sweep_seeds)
    table = Table(
        [
            "plan",
            "conv MACs ×",
            "params ×",
            "step 1 %",
            "step 2 %",
            "step 2 + BN %",
            "direct %",
            "direct − (step 2 + BN), paired",
            "residual r(W)",
        ]
    )
    points = []
    baseline = [runner.regularized(MAIN_PLAN, 0.0, seed).step1 for seed in seeds]
    table.rows.append(["baseline (3×3)", "1.00", "1.00", pm(baseline), "—", "—", "—", "—", "—"])
    for plan_text in config.plans:
        runs = [runner.regularized(plan_text, config.strength, seed) for seed in seeds]
        direct = [runner.direct(plan_text, seed) for seed in seeds]
        macs, structured_macs, params, structured_params = structured_cost(plan_text)
        table.rows.append(
            [
                f"`{plan_text}`",
                f"{macs / structured_macs:.2f}",
                f"{params / structured_params:.2f}",
                pm([r.step1 for r in runs]),
                pm([r.step2 for r in runs]),
                pm([r.step2_recalibrated for r in runs]),
                pm(direct),
                pm([d - r.step2_recalibrated for d, r in zip(direct, runs)]),
                pm([r.residual for r in runs], 1.0, 4),
            ]
        )
        points.append((plan_text, structured_macs / macs, runs, direct))
    table.data = {"points": points, "baseline": baseline}
    return table


# --------------------------------------------------------------------- (c) cost
def _timed(function: Callable[[], None]) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1e3


def training_step(
    model: nn.Module,
    batch_size: int,
    regularizer: Optional[StructuralRegularizer] = None,
    image_shape: Sequence[int] = IMAGE_SHAPE[1:],
) -> Callable[[], None]:
    """One SGD step of ``model`` on a fixed random batch of ``image_shape`` images (plus the
    regularizer, if given)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch_size, *image_shape)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        if regularizer is not None:
            loss = loss + regularizer()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def alternating_medians(functions: Dict[str, Callable[[], None]], count: int) -> Dict[str, float]:
    """Median ms of each function, called in turn ``count`` times, so drifts hit all alike."""
    for _ in range(3):
        for function in functions.values():
            function()
    times: Dict[str, List[float]] = {name: [] for name in functions}
    for _ in range(count):
        for name, function in functions.items():
            times[name].append(_timed(function))
    return {name: float(np.median(values)) for name, values in times.items()}


def experiment_step_cost(config: Config) -> Table:
    """(c) the regularizer's share of a training step of the small CNN."""
    table = Table(
        [
            "kernel",
            "plan",
            "batch",
            "step ms",
            "step + regularizer ms",
            "ratio",
            "regularizer alone ms",
        ]
    )
    ratios: Dict[int, List[Tuple[int, float]]] = {}
    grid = [(k, b) for k in config.kernel_sizes for b in config.batch_sizes]
    for kernel_size, batch_size in progress(grid, len(grid), "(c) step cost"):
        torch.manual_seed(0)
        model = small_cnn(kernel_size)
        plan = Plan.parse(f"{kernel_size}x{kernel_size}:c=C/2,n={kernel_size - 1}")
        regularizer = StructuralRegularizer(model, plan, 0.1)

        def regularizer_alone() -> None:
            model.zero_grad(set_to_none=True)
            regularizer().backward()

        medians = alternating_medians(
            {
                "without": training_step(model, batch_size),
                "with": training_step(model, batch_size, regularizer),
                "alone": regularizer_alone,
            },
            config.timing_steps,
        )
        without, with_, alone = medians["without"], medians["with"], medians["alone"]
        ratios.setdefault(kernel_size, []).append((batch_size, with_ / without))
        table.rows.append(
            [
                f"{kernel_size}×{kernel_size}",
                f"c=C/2, n={kernel_size - 1}",
                str(batch_size),
                f"{without:.2f}",
                f"{with_:.2f}",
                f"{with_ / without:.2f}",
                f"{alone:.2f}",
            ]
        )
    table.data = {"ratios": ratios}
    return table


def experiment_direct_cost(config: Config) -> Table:
    """(c) a training step of the ordinary CNN, with the regularizer, and trained through α."""
    table = Table(
        [
            "plan",
            "batch",
            "ordinary ms",
            "+ regularizer ms (ratio)",
            "direct, StructuredConv2d ms (ratio)",
        ]
    )
    grid = [(p, b) for p in config.plans for b in config.batch_sizes[-2:]]
    for plan_text, batch_size in progress(grid, len(grid), "(c) direct cost"):
        torch.manual_seed(0)
        plan = Plan.parse(plan_text)
        ordinary = small_cnn()
        direct = with_fresh_structured_layers(small_cnn(), plan)
        medians = alternating_medians(
            {
                "ordinary": training_step(ordinary, batch_size),
                "regularized": training_step(
                    ordinary, batch_size, StructuralRegularizer(ordinary, plan, 0.1)
                ),
                "direct": training_step(direct, batch_size),
            },
            config.timing_steps,
        )
        base = medians["ordinary"]
        table.rows.append(
            [
                f"`{plan_text}`",
                str(batch_size),
                f"{base:.2f}",
                f"{medians['regularized']:.2f} ({medians['regularized'] / base:.2f})",
                f"{medians['direct']:.2f} ({medians['direct'] / base:.2f})",
            ]
        )
    return table


def _median_ms(function: Callable[[], None], repeats: int) -> float:
    function()
    return float(np.median([_timed(function) for _ in range(repeats)]))


def experiment_dense_projector(config: Config) -> Table:
    """(c) one layer's residual, forward + backward: Kronecker factors against a dense projector."""
    table = Table(
        [
            "layer (3×3, c=C/2, n=2)",
            "Kronecker ms",
            "dense projector ms",
            "projector MB",
        ]
    )
    for channels in progress(config.dense_channels, len(config.dense_channels), "(c) dense"):
        structure = Structure(channels, 3, channels // 2, 2)
        weight = torch.randn(channels, channels, 3, 3, requires_grad=True)
        basis = np.kron(
            banded_ones(channels, channels // 2), np.kron(banded_ones(3, 2), banded_ones(3, 2))
        )
        pinv = np.kron(
            np.linalg.pinv(banded_ones(channels, channels // 2)),
            np.kron(np.linalg.pinv(banded_ones(3, 2)), np.linalg.pinv(banded_ones(3, 2))),
        )
        projector = torch.tensor(basis @ pinv, dtype=torch.float32)

        def kronecker() -> None:
            structure.residual(weight).backward()

        def dense() -> None:
            flat = weight.reshape(channels, -1)
            (
                torch.linalg.vector_norm(flat - flat @ projector.T) / torch.linalg.vector_norm(flat)
            ).backward()

        table.rows.append(
            [
                f"{channels}→{channels}",
                f"{_median_ms(kronecker, 5):.2f}",
                f"{_median_ms(dense, 3):.1f}",
                f"{projector.numel() * 4 / 2**20:.0f}",
            ]
        )
    return table


# --------------------------------------------------------------------- (d) fixed kernels
def experiment_fixed_kernels() -> Table:
    """(d) best relative residual of fixed 3×3 filters for ``c = 1`` and each reduced size."""
    header = ["kernel"] + [f"n = {h}×{w}" for h, w in FIXED_REDUCED_SIZES]
    table = Table(header)
    approximations = {}
    for name, values in FIXED_KERNELS.items():
        kernel = np.asarray(values, dtype=np.float64)[None, None]
        row = [name]
        for size in FIXED_REDUCED_SIZES:
            row.append(f"{Structure(1, 3, 1, size).residual(kernel):.3f}")
        approximations[name] = (kernel[0, 0], Structure(1, 3, 1, 2).project(kernel)[0, 0])
        table.rows.append(row)
    table.data = {"approximations": approximations}
    return table


# --------------------------------------------------------------------- plots and report
def plot_all(out: pathlib.Path, tables: Dict[str, Table], config: Config) -> None:
    """Write the PNG figures into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = tables["variants"].data["columns"]
    labels = list(columns)
    stats = [mean_se([100 * v for v in columns[label]]) for label in labels]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    axis.bar(
        range(len(labels)),
        [m for m, _ in stats],
        yerr=[s for _, s in stats],
        capsize=3,
        color=["#777"] * 3 + ["#1f77b4"] * 3 + ["#2ca02c", "#d62728"],
    )
    axis.set_xticks(range(len(labels)), labels, rotation=25, ha="right")
    axis.set_ylim(max(0, min(m - s for m, s in stats) - 5), 100)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"(a) digits, plan {MAIN_PLAN}, λ = {config.strength:g}, {config.seeds} seeds")
    figure.tight_layout()
    figure.savefig(out / "experiments_variants.png", dpi=120)
    plt.close(figure)

    curves = tables["strength"].data["curves"]
    strengths = [s for s in curves if s > 0]
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for attribute, label in (
        ("step1", "step 1 (regularized)"),
        ("step2", "step 2 (decomposed)"),
        ("step2_recalibrated", "step 2 + BN re-estimated"),
    ):
        stats = [mean_se([100 * getattr(r, attribute) for r in curves[s]]) for s in strengths]
        axis.errorbar(
            strengths,
            [m for m, _ in stats],
            yerr=[e for _, e in stats],
            marker="o",
            capsize=3,
            label=label,
        )
    axis.axhline(
        100 * mean_se([r.step1 for r in curves[0.0]])[0], color="grey", ls="--", label="baseline"
    )
    axis.set_xscale("log")
    axis.set_xlabel("λ")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"(b) accuracy vs λ, plan {MAIN_PLAN}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "experiments_strength.png", dpi=120)
    plt.close(figure)

    points = tables["compression"].data["points"]
    figure, axis = plt.subplots(figsize=(6, 3.6))
    fractions = [fraction for _, fraction, _, _ in points]
    for getter, label, marker in (
        (lambda runs, direct: [r.step2 for r in runs], "regularize + decompose", "o"),
        (lambda runs, direct: [r.step2_recalibrated for r in runs], "… + BN re-estimated", "s"),
        (lambda runs, direct: direct, "direct training of α", "^"),
    ):
        stats = [mean_se([100 * v for v in getter(runs, direct)]) for _, _, runs, direct in points]
        axis.errorbar(
            fractions,
            [m for m, _ in stats],
            yerr=[e for _, e in stats],
            marker=marker,
            ls="none",
            capsize=3,
            label=label,
        )
    for plan_text, fraction, _, _ in points:
        axis.annotate(
            plan_text.split(":")[1],
            (fraction, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 4),
            textcoords="offset points",
            rotation=90,
            fontsize=7,
        )
    axis.axhline(
        100 * mean_se(tables["compression"].data["baseline"])[0],
        color="grey",
        ls="--",
        label="baseline",
    )
    axis.set_xlabel("structured conv MACs / original conv MACs")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"(b) accuracy vs compression, λ = {config.strength:g}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "experiments_compression.png", dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for kernel_size, values in tables["step_cost"].data["ratios"].items():
        axis.plot(
            [b for b, _ in values],
            [r for _, r in values],
            marker="o",
            label=f"{kernel_size}×{kernel_size}, n = {kernel_size - 1}",
        )
    axis.axhline(1.0, color="grey", ls="--")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size")
    axis.set_ylabel("step time with / without regularizer")
    axis.set_title("(c) regularizer overhead per training step")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "experiments_cost.png", dpi=120)
    plt.close(figure)

    approximations = tables["fixed"].data["approximations"]
    figure, axes = plt.subplots(2, len(approximations), figsize=(1.4 * len(approximations), 3.2))
    for column, (name, (kernel, approximation)) in enumerate(approximations.items()):
        limit = np.abs(kernel).max()
        for row, image in enumerate((kernel, approximation)):
            axes[row, column].imshow(image, cmap="coolwarm", vmin=-limit, vmax=limit)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(name.replace(" (", "\n("), fontsize=7)
    axes[0, 0].set_ylabel("3×3 kernel", fontsize=8)
    axes[1, 0].set_ylabel("best n = 2×2", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "experiments_kernels.png", dpi=120)
    plt.close(figure)


def _difference_text(columns: Dict[str, List[float]], first: str, second: str) -> str:
    differences = [a - b for a, b in zip(columns[first], columns[second])]
    return f"{pm(differences)} points ({verdict(differences)})"


def _strength_text(table: Table) -> str:
    curves = table.data["curves"]
    parts = []
    for strength, runs in curves.items():
        differences = [r.step2 - r.step1 for r in runs]
        parts.append(f"λ = {strength:g}: {pm(differences)} ({verdict(differences)})")
    return "Step 2 − step 1 per λ, paired, points: " + "; ".join(parts) + "."


def _exact_kernels_text(table: Table) -> str:
    exact = {
        size: [row[0] for row in table.rows if float(row[1 + index]) < 5e-4]
        for index, size in enumerate(FIXED_REDUCED_SIZES)
    }
    parts = [
        f"n = {h}×{w}: {', '.join(names) if names else 'none'}" for (h, w), names in exact.items()
    ]
    return "Exactly representable (residual < 0.0005), per reduced size: " + "; ".join(parts) + "."


def write_report(
    out: pathlib.Path,
    tables: Dict[str, Table],
    config: Config,
    minutes: float,
) -> pathlib.Path:
    """Write ``experiments.md`` into ``out``; return its path."""
    columns = tables["variants"].data["columns"]
    import sklearn

    text = f"""# Training-side experiments: structural regularization, decomposition, direct training

Generated by `python benchmarks/paper_questions.py` ({minutes:.1f} min on this machine,
torch {torch.__version__}, scikit-learn {sklearn.__version__}, {torch.get_num_threads()} thread(s));
do not edit by hand, rerun the script. Accuracy: mean ± standard error over seeds; a seed fixes
the train/test split, the initialization and the batch order, and all variants of a seed share
them, so differences are reported paired (mean ± SE of the per-seed differences).

## Data set and model

**Data**: scikit-learn's digits (`sklearn.datasets.load_digits`: 1,797 grey images of 8×8
pixels, 10 classes), which ships inside the scikit-learn wheel (`sklearn/datasets/data/digits.csv.gz`,
57 kB), so nothing is downloaded at run time. A stratified 75/25 train/test split per seed (1,347 / 450
images). A larger image set inside a PyPI wheel was looked for and not found: scikit-learn's
other bundled sets are tabular (its two sample photos are unlabelled), its image sets (Olivetti
faces, LFW) are fetched from the network; the PyPI packages `mnists` 0.4.1 and `mnist1d`
0.0.2.post1 have 12 kB and 14 kB wheels (they fetch or generate their data), and `mnist`,
`python-mnist` and `emnist` describe themselves as downloaders/parsers. The digits are easy
(the baseline reaches {pm(columns["baseline"])} %), so differences of a few tenths of a point are at the noise level
with 450 test images; the tables say where a difference exceeds two standard errors.

**Model**: four Conv(3×3, no bias)–BatchNorm–ReLU blocks of widths {", ".join(map(str, WIDTHS))}
(2×2 max-pool after the second), global average pool, linear 64→10. Trained {config.epochs} epochs,
batch {config.batch_size}, SGD with Nesterov momentum 0.9, weight decay 5e-4, one-cycle LR up to
{config.max_lr}. The main plan is `{MAIN_PLAN}` (every 3×3 conv becomes a 2×2 conv on a 2×2
spatial sum-pool); its parameter count equals that of the same network with plain 2×2 kernels,
which makes that comparison exact. Regularized runs train from scratch with
`loss + λ · Σ r(W)` (`StructuralRegularizer`, the paper's Eq. 3). "BN re-estimated" re-computes
the BatchNorm statistics of the decomposed model with one pass over the training images (no
labels, no gradients).

## (a) Baseline, step 1, step 2, direct training, plain 2×2 ({config.seeds} seeds)

{tables["variants"].markdown()}

![variants](experiments_variants.png)

* Accuracy lost by decomposition (step 2 − step 1): {_difference_text(columns, "step 2", "step 1")}.
  Without step 1, projecting the baseline: {_difference_text(columns, "baseline projected", "baseline")};
  with BatchNorm re-estimated: {_difference_text(columns, "baseline projected + BN", "baseline")}.
* Regularize + decompose against the baseline (step 2 − baseline): {_difference_text(columns, "step 2", "baseline")}.
* Direct training of α against regularize + decompose (direct − step 2): {_difference_text(columns, "direct", "step 2")}.
* Plain 2×2 kernels against structured 3×3 with the same parameters (2×2 − step 2):
  {_difference_text(columns, "plain 2x2", "step 2")}; against direct training of the structured 3×3
  (2×2 − direct): {_difference_text(columns, "plain 2x2", "direct")}.

## (b) Accuracy against λ ({config.sweep_seeds} seeds, plan `{MAIN_PLAN}`)

λ = 0 is the baseline, projected without regularization. The residual is the mean over the
planned layers of `r(W) = ‖W − A A⁺ W‖ / ‖W‖` at the end of step 1.

{tables["strength"].markdown()}

![strength](experiments_strength.png)

{_strength_text(tables["strength"])}

## (b) Accuracy against compression ({config.sweep_seeds} seeds, λ = {config.strength:g})

"conv MACs ×" and "params ×" are original over structured (multiplies of the convs and the
linear layer; parameters of the whole model, BatchNorm included); the sum-pool adds are not
counted. `c=C/k` is rounded down to at least 1, so the first conv (1 input channel) keeps c = 1.

{tables["compression"].markdown()}

![compression](experiments_compression.png)

## (c) Cost of the regularizer

A training step (forward, backward, SGD update) of the same CNN with k×k kernels, with and
without the regularizer over its four convs (plan `c=C/2, n=k−1`), median of
{config.timing_steps} steps of each kind, alternating; "regularizer alone" is its forward +
backward. Its work does not depend on the batch, so the overhead falls as the batch grows
(the spread of the last column is timing noise: this 2-core machine is shared, so absolute
times vary between runs; compare the ratios, measured within one run).

{tables["step_cost"].markdown()}

![cost](experiments_cost.png)

A training step of the 3×3 CNN for each plan: ordinary, ordinary + regularizer, and trained
through α (`StructuredConv2d`, whose forward pass is the sum-pool then the small conv), same
alternating medians:

{tables["direct_cost"].markdown()}

With `c < C` the sum-pool of `StructuredConv2d` slides a window of `D = C − c + 1` channels.
Until issue 17 it was an `avg_pool` over that window, whose forward + backward cost more than
the whole ordinary conv; it is now running sums by doubling with a hand-written adjoint
backward (`tvm_structconv.nn.functional.window_sum`), about `2·log2(D)` adds per element; see
section (e) for the layer timings.

The residual is computed through the small Kronecker factors, one kernel axis at a time. The
same residual of one layer through a dense projector `I − A A⁺` (precomputed, float32):

{tables["dense"].markdown()}

ResNet-18 (16 3×3 convs, 11 M weights): the regularizer's share of a training step is
measured by `benchmarks/training_speed.py`, in section (e) (the table "Regularizer on
ResNet-18", with `c = C` and `c = C/2`, at batch 8 and 64). An earlier version of this
paragraph measured 67 % of a batch-8 step for the first regularizer, which multiplied the
512×512 identity channel factor of the `c = C` convs of the last stage; that and the channel
projector's `c × c` product are gone (section (e)).

## (d) Fixed 3×3 kernels approximated by structured kernels (c = 1)

Best relative residual `‖K − A A⁺ K‖ / ‖K‖` of a single-channel 3×3 kernel `K` for each
reduced size n (n = 3×3 is exact). With `c = C` (D = 1) the channel factor is the identity,
so the same numbers hold for every input-channel slice of a multi-channel `c = C` layer.

{tables["fixed"].markdown()}

![kernels](experiments_kernels.png)

Top row: the kernels; bottom row: their best n = 2×2 approximation (same colour scale).
{_exact_kernels_text(tables["fixed"])}
"""
    path = out / "experiments.md"
    path.write_text(text + kept_training_side(path), encoding="utf-8")
    return path


TRAINING_SIDE_TITLE = "\n## (e) Training side after issue 17"


def kept_training_side(path: pathlib.Path) -> str:
    """Section (e) of the report at ``path`` as it stands (written by hand around the tables
    of ``training_speed.py`` and ``direct_training.py``), or generated from those tables
    (:func:`training_side_section`) when ``path`` has none."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if TRAINING_SIDE_TITLE in text:
            return text[text.index(TRAINING_SIDE_TITLE) :]
    return training_side_section()


def training_side_section(results: pathlib.Path = ROOT / "benchmarks" / "results") -> str:
    """Section (e): the tables that ``training_speed.py`` and ``direct_training.py`` wrote."""
    parts = []
    for name, title in (
        ("training_speed.md", "Speed of the structured layers and cost of the regularizer"),
        ("direct_training.md", "Direct training of α against the two-step method"),
    ):
        path = results / name
        if path.exists():
            parts.append(f"### {title}\n\n{path.read_text(encoding='utf-8')}")
    if not parts:
        return ""
    return (
        TRAINING_SIDE_TITLE + " (from `benchmarks/training_speed.py` and "
        "`benchmarks/direct_training.py`)\n\n" + TRAINING_SIDE_NOTES + "\n\n" + "\n".join(parts)
    )


TRAINING_SIDE_NOTES = """The pool of `StructuredConv2d` / `StructuredLinear` is separable running sums
(`window_sum`: sums of 1, 2, 4 … elements, then the binary digits of the window) in a custom
`autograd.Function` whose backward is the adjoint sums of the gradient (a zero-padded window
sum), cropped by the padding; `F.pad` is fused into it. The regularizer applies the per-axis
projectors `P = B B⁺`, cached per device and dtype: the spatial pair as one `N² × N²` product,
the channel projector's complement in closed form (`C` adds per column) and only when
`c < C`; layers of equal shape share one autograd node. Direct training: `precondition_alpha_gradients` makes SGD on `alpha`
the projected SGD step of the composed kernel (gradient hook `(AᵀA)⁻¹`);
`structured_parameter_groups` only rescales each `alpha`'s learning rate by `1/(D·Mh·Mw)`.
`StructuredConv2d` / `StructuredLinear` start by default (`init="projected"`) from
`alpha = A⁺ W₀`, the projection of an ordinary layer's initial kernel; the former init
(`"pooled"`: Kaiming on `alpha`, divided by `√(D·Mh·Mw)`) made kernels nearly constant over
the channel window.

The data set of the direct-training table is `tvm_structconv.nn.synthetic.distorted_digits`:
ten 5×7 digit glyphs drawn on 32×32 through random affine maps (rotation ±26°, scale
0.8–1.25 per axis, shear, shift), random stroke width, two distractor strokes made of glyph
parts, random contrast and Gaussian noise (σ = 0.3), all from one seed; nothing is downloaded
and no data package is needed (CI's test extra has no scikit-learn). It is harder than the
8×8 digits (the CNN above reaches about 99 % there, here about 70 % on this budget), so the
variants separate.

All timings come from a 2-core machine shared with other jobs (load 6–9 during the runs):
ratios within one run, medians of interleaved rounds; absolute times vary between runs."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (2 seeds, 2 epochs)")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="output folder (default: docs/, or a temporary folder with --quick)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    out = args.out or (
        pathlib.Path(tempfile.mkdtemp(prefix="paper_questions_")) if args.quick else ROOT / "docs"
    )
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runner = Runner(config)
    warm_up(runner.split(0))
    tables: Dict[str, Table] = {}
    for name, run in (
        ("variants", lambda: experiment_variants(runner)),
        ("strength", lambda: experiment_strength(runner)),
        ("compression", lambda: experiment_compression(runner)),
        ("step_cost", lambda: experiment_step_cost(config)),
        ("direct_cost", lambda: experiment_direct_cost(config)),
        ("dense", lambda: experiment_dense_projector(config)),
        ("fixed", experiment_fixed_kernels),
    ):
        began = time.perf_counter()
        tables[name] = run()
        print(f"{name}: {time.perf_counter() - began:.0f} s", flush=True)
    plot_all(out, tables, config)
    path = write_report(out, tables, config, (time.perf_counter() - start) / 60)
    print(f"wrote {path} and its plots in {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
