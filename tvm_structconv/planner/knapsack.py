"""Multiple-choice knapsack: one choice per group, total weight within a capacity, least cost.

:func:`solve` is the exact dynamic program over integer weights (``O(groups × capacity ×
choices)``); :func:`solve_budget` puts real latencies on a grid for it. Each group's lightest
choice is taken off first, so the grid spans only the *slack* the budget leaves, and weights
are rounded up: a solution on the grid always meets the real budget.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["solve", "solve_budget"]


def solve(groups: Sequence[Sequence[Tuple[int, float]]], capacity: int) -> Optional[List[int]]:
    """The choice per group with total weight ``<= capacity`` and the least total cost.

    Parameters
    ----------
    groups
        Per group, its choices as ``(weight, cost)``; weights are non-negative ints.
    capacity
        The largest total weight.

    Returns
    -------
    list of int or None
        The index of the chosen choice of each group, or ``None`` when even the lightest
        choices weigh more than ``capacity``. Among solutions of equal cost, the lightest.
    """
    if capacity < 0 or any(not group for group in groups):
        return None
    inf = math.inf
    # best[w]: least cost of the groups so far with total weight exactly w
    best = np.full(capacity + 1, inf)
    best[0] = 0.0
    picks = []
    for group in groups:
        new = np.full(capacity + 1, inf)
        pick = np.full(capacity + 1, -1, dtype=np.int64)
        for index, (weight, cost) in enumerate(group):
            if weight < 0:
                raise ValueError(f"weights must be non-negative, got {weight}")
            if weight > capacity:
                continue
            shifted = np.full(capacity + 1, inf)
            shifted[weight:] = best[: capacity + 1 - weight] + cost
            better = shifted < new
            new[better] = shifted[better]
            pick[better] = index
        best = new
        picks.append(pick)
    finite = np.flatnonzero(np.isfinite(best))
    if finite.size == 0:
        return None
    lowest = best[finite].min()
    # the lightest total among the least-cost ones (costs compared with a relative tolerance)
    total = int(finite[np.flatnonzero(best[finite] <= lowest + 1e-12 * max(1.0, abs(lowest)))[0]])
    chosen = []
    for group, pick in zip(reversed(groups), reversed(picks)):
        index = int(pick[total])
        chosen.append(index)
        total -= group[index][0]
    return chosen[::-1]


def solve_budget(
    latencies: Sequence[Sequence[float]],
    costs: Sequence[Sequence[float]],
    budget: float,
    resolution: int = 4000,
) -> Optional[List[int]]:
    """:func:`solve` for real latencies: the least-cost choices whose latencies sum to
    ``<= budget``, or ``None`` when the fastest choices exceed it.

    The slack ``budget − Σ min latency`` is cut into ``resolution`` steps and every latency
    above its group's minimum is rounded up to a whole step, so the result always meets the
    budget; it is optimal on that grid (it may miss a solution that fits only within the
    rounding, at most one step per group).
    """
    floor = sum(min(group) for group in latencies)
    slack = budget - floor
    if slack < 0:
        return None
    step = slack / resolution if slack > 0 else 1.0
    groups = []
    for group_latencies, group_costs in zip(latencies, costs):
        low = min(group_latencies)
        groups.append(
            [
                (int(math.ceil((latency - low) / step - 1e-9)), float(cost))
                for latency, cost in zip(group_latencies, group_costs)
            ]
        )
    return solve(groups, resolution if slack > 0 else 0)
