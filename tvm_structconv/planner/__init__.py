"""The latency-budget planner: each layer's structure, chosen from latency measured on the target.

>>> from tvm_structconv.planner import plan_model
>>> result = plan_model("resnet18", "x86", speedup=1.6)      # doctest: +SKIP
>>> result.plan.save("resnet18-1.6x.json")                    # doctest: +SKIP
>>> print(result.summary().splitlines()[-1])                   # doctest: +SKIP
damage 9.8123 (residual); predicted 1.60x, measured 1.57x

Modules: :mod:`~tvm_structconv.planner.layers` (layers and their candidate grid),
:mod:`~tvm_structconv.planner.source` (the model and its projected imports),
:mod:`~tvm_structconv.planner.table` (the per-target latency table and its cache),
:mod:`~tvm_structconv.planner.timers` (local and RPC timing),
:mod:`~tvm_structconv.planner.damage` (residual and calibration sensitivity),
:mod:`~tvm_structconv.planner.knapsack` (the exact multiple-choice knapsack),
:mod:`~tvm_structconv.planner.planning` (the driver) and
:mod:`~tvm_structconv.planner.frontier` (uniform plans, the frontier and its plot).
"""

from tvm_structconv.planner.frontier import (
    UNIFORM_PLANS,
    FrontierPoint,
    frontier,
    plot_frontier,
    uniform_point,
)
from tvm_structconv.planner.knapsack import solve, solve_budget
from tvm_structconv.planner.planning import (
    BudgetError,
    Planner,
    PlanResult,
    check_budget,
    plan_model,
)

__all__ = [
    "UNIFORM_PLANS",
    "BudgetError",
    "FrontierPoint",
    "PlanResult",
    "Planner",
    "check_budget",
    "frontier",
    "plan_model",
    "plot_frontier",
    "solve",
    "solve_budget",
    "uniform_point",
]
