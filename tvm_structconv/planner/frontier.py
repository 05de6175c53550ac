"""Damage against latency: the planner's frontier and the uniform plans beside it.

:func:`frontier` solves the knapsack for a sweep of budgets between the fastest plan and the
original, giving predicted ``(latency, damage)`` points of planned models; :func:`uniform_point`
puts a hand-written plan (``3x3:n=2,c=C``: one structure for every layer of a kind) on the
same axes, from the same table; :func:`plot_frontier` draws both (``structconv plan --plot``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

from tvm_structconv.plan import Plan
from tvm_structconv.planner.planning import PlanResult, choose
from tvm_structconv.planner.source import stand_in

__all__ = [
    "UNIFORM_PLANS",
    "FrontierPoint",
    "frontier",
    "plot_frontier",
    "uniform_choice",
    "uniform_point",
]

#: The hand-written plans the planner is compared with: one structure per kind of layer.
UNIFORM_PLANS = (
    "3x3:n=2,c=C",
    "3x3:n=2,c=C/2",
    "1x1:c=C/2",
    "3x3:n=2,c=C;1x1:c=C/2",
    "3x3:n=2,c=C/2;1x1:c=C/2",
)


@dataclass(frozen=True)
class FrontierPoint:
    """A model on the damage-latency plane (latency predicted from the table)."""

    label: str
    predicted_ms: float
    damage: float
    choice: Dict[str, int]
    measured_ms: Optional[float] = None


def uniform_choice(result: PlanResult, plan_text: str) -> Dict[str, int]:
    """The candidate index per layer that the rule plan ``plan_text`` gives.

    Raises
    ------
    ValueError
        If the plan gives a layer a structure outside the table's grid, or one the compiler
        did not rewrite.
    """
    plan = Plan.parse(plan_text)
    table = result.table
    choice = {}
    for layer in table.layers:
        structure = plan.structure_for(
            layer.module_name, stand_in(layer.weight_shape, layer.groups)
        )
        if structure is None or structure.is_trivial:
            choice[layer.name] = 0
            continue
        matches = [
            index
            for index, candidate in enumerate(table.candidates[layer.name])
            if candidate.structure == structure and result.cost_ms[layer.name][index] is not None
        ]
        if not matches:
            raise ValueError(f"{plan_text} gives {layer.name} {structure}, not in the table")
        choice[layer.name] = matches[0]
    return choice


def _point(result: PlanResult, label: str, choice: Dict[str, int]) -> FrontierPoint:
    latency = result.rest_ms + sum(result.cost_ms[n][i] for n, i in choice.items())
    damage = sum(result.damage[n][i] for n, i in choice.items())
    return FrontierPoint(label, latency, damage, choice)


def uniform_point(result: PlanResult, plan_text: str) -> FrontierPoint:
    """The predicted latency and damage of the uniform plan ``plan_text``."""
    return _point(result, plan_text, uniform_choice(result, plan_text))


def frontier(result: PlanResult, points: int = 40) -> List[FrontierPoint]:
    """Planned models for ``points`` budgets from the fastest plan to the original."""
    table = result.table
    costs = [[c for c in result.cost_ms[layer.name] if c is not None] for layer in table.layers]
    fastest = sum(min(row) for row in costs)
    slowest = sum(result.cost_ms[layer.name][0] for layer in table.layers)
    found: List[FrontierPoint] = []
    for step in range(points + 1):
        budget = fastest + (slowest - fastest) * step / points
        choice = choose(table, result.cost_ms, result.damage, budget * (1 + 1e-9))
        if choice is not None:
            point = _point(result, f"budget {result.rest_ms + budget:.3f} ms", choice)
            if not found or point.damage != found[-1].damage:
                found.append(point)
    return found


def plot_frontier(
    result: PlanResult,
    path: Union[str, os.PathLike],
    uniform: Sequence[FrontierPoint] = (),
    planned: Sequence[FrontierPoint] = (),
) -> None:
    """Draw damage against latency: the frontier (line), uniform plans and planned models.

    ``planned`` and ``uniform`` points with ``measured_ms`` are drawn at their measured
    latency (filled; scale it to ``result.original_ms`` when the original measured otherwise in
    the same run), predicted ones hollow.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = frontier(result)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(
        [p.predicted_ms for p in curve],
        [p.damage for p in curve],
        "-",
        color="#1f77b4",
        label="planner frontier (predicted)",
    )
    for points, marker, color, name in (
        (uniform, "s", "#d62728", "uniform plan"),
        (planned, "o", "#2ca02c", "planned"),
    ):
        for point in points:
            axes.plot(point.predicted_ms, point.damage, marker, mfc="none", color=color)
            if point.measured_ms is not None:
                axes.plot(point.measured_ms, point.damage, marker, color=color)
            axes.annotate(point.label, (point.predicted_ms, point.damage), fontsize=6)
        if points:
            axes.plot([], [], marker, color=color, label=f"{name} (filled: measured)")
    axes.axvline(result.original_ms, color="#8c8c8c", ls=":", label="original")
    axes.set_xlabel("latency, ms")
    axes.set_ylabel(f"total damage ({result.damage_kind})")
    axes.set_title(f"{result.model} on {result.target.attrs.get('mcpu', result.target.kind.name)}")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=130)
    plt.close(figure)
