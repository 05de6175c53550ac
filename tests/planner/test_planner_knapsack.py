"""The multiple-choice knapsack against brute force on small random instances."""

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from tvm_structconv.planner.knapsack import solve, solve_budget

choice = st.tuples(st.integers(0, 12), st.floats(0, 10, allow_nan=False))
instance = st.tuples(
    st.lists(st.lists(choice, min_size=1, max_size=4), min_size=1, max_size=5),
    st.integers(0, 40),
)


def brute_force(groups, capacity):
    """The least total cost over every combination within the capacity (``inf`` if none)."""
    best = math.inf
    for picks in itertools.product(*groups):
        if sum(weight for weight, _ in picks) <= capacity:
            best = min(best, sum(cost for _, cost in picks))
    return best


@given(instance)
def test_dynamic_program_finds_the_brute_force_optimum(case):
    groups, capacity = case
    chosen = solve(groups, capacity)
    best = brute_force(groups, capacity)
    if math.isinf(best):
        assert chosen is None
        return
    assert chosen is not None and len(chosen) == len(groups)
    picks = [group[index] for group, index in zip(groups, chosen)]
    assert sum(weight for weight, _ in picks) <= capacity
    assert math.isclose(sum(cost for _, cost in picks), best, rel_tol=1e-9, abs_tol=1e-9)


real_choice = st.tuples(st.floats(0.01, 5, allow_nan=False), st.floats(0, 3, allow_nan=False))


@given(
    st.lists(st.lists(real_choice, min_size=1, max_size=4), min_size=1, max_size=5),
    st.floats(0, 1),
)
def test_budget_solution_meets_the_budget_and_is_optimal_up_to_one_step_per_group(groups, where):
    latencies = [[latency for latency, _ in group] for group in groups]
    costs = [[cost for _, cost in group] for group in groups]
    fastest = sum(map(min, latencies))
    slowest = sum(map(max, latencies))
    budget = fastest + where * (slowest - fastest)
    resolution = 4000
    chosen = solve_budget(latencies, costs, budget, resolution)
    assert chosen is not None
    total = sum(group[index] for group, index in zip(latencies, chosen))
    assert total <= budget * (1 + 1e-12)
    cost = sum(group[index] for group, index in zip(costs, chosen))
    # every solution of the real instance within a budget tighter by one grid step per group
    # is on the grid too: the grid's optimum is at least as good
    step = (budget - fastest) / resolution
    pairs = [list(zip(row, row_costs)) for row, row_costs in zip(latencies, costs)]
    best = math.inf
    for picks in itertools.product(*pairs):
        if sum(latency for latency, _ in picks) <= budget - step * len(groups):
            best = min(best, sum(c for _, c in picks))
    assert cost <= best + 1e-9


def test_an_unreachable_budget_has_no_solution_and_an_exact_one_has():
    assert solve_budget([[2.0, 1.0], [3.0]], [[0.0, 1.0], [0.0]], 3.5) is None
    assert solve_budget([[2.0, 1.0], [3.0]], [[0.0, 1.0], [0.0]], 4.0) == [1, 0]
    assert solve([[(5, 0.0)]], 4) is None


def test_ties_in_cost_take_the_lighter_choice():
    assert solve([[(3, 1.0), (1, 1.0)], [(0, 0.0)]], 10) == [1, 0]
