"""The knapsack solvers against brute force on small seeded random instances."""
from __future__ import annotations

import random

import pytest

from slimkit.plan.solve import Choice, brute_force, feasible, solve, solve_dp, solve_greedy


def _instance(rng: random.Random, n_groups: int, keys: tuple[str, ...], integer: bool) -> list[list[Choice]]:
    groups = []
    for g in range(n_groups):
        group = [Choice("keep", {"drop": 0.0, **{k: 0.0 for k in keys}})]
        for c in range(rng.randint(1, 3)):
            vals = {k: (float(rng.randint(-9, 3)) if integer else rng.uniform(-9, 3)) for k in keys}
            group.append(Choice(f"g{g}c{c}", {"drop": round(rng.uniform(-0.2, 5.0), 3), **vals}))
        groups.append(group)
    return groups


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("keys", [("latency",), ("latency", "size")])
def test_dp_equals_brute_force_on_integer_costs(seed: int, keys: tuple[str, ...]) -> None:
    rng = random.Random(seed)
    groups = _instance(rng, rng.randint(2, 5), keys, integer=True)
    limits = {k: float(rng.randint(-14, -2)) for k in keys}
    exact = brute_force(groups, "drop", limits)
    dp = solve_dp(groups, "drop", limits, steps={k: 1.0 for k in keys})  # integer costs: bins are exact
    if exact is None:  # no feasible plan exists: no solver may claim one
        assert dp is None
        assert solve_greedy(groups, "drop", limits) is None
        return
    assert dp is not None
    assert dp.totals["drop"] == pytest.approx(exact.totals["drop"])
    assert feasible(dp.totals, limits)
    greedy = solve_greedy(groups, "drop", limits)
    if greedy is not None:  # a heuristic: feasible and never better than the optimum
        assert feasible(greedy.totals, limits)
        assert greedy.totals["drop"] >= exact.totals["drop"] - 1e-9


@pytest.mark.parametrize("seed", range(8))
def test_dp_on_float_costs_is_feasible_and_close(seed: int) -> None:
    rng = random.Random(100 + seed)
    groups = _instance(rng, 5, ("latency",), integer=False)
    limits = {"latency": -6.0}
    exact = brute_force(groups, "drop", limits)
    dp = solve_dp(groups, "drop", limits, resolution=2048)
    if exact is None:
        assert dp is None
        return
    if dp is not None:  # rounding costs up can only lose plans at the budget's edge, never break it
        assert feasible(dp.totals, limits)
        assert dp.totals["drop"] >= exact.totals["drop"] - 1e-9


def test_latency_objective_with_drop_limit() -> None:
    groups = [[Choice("keep", {"latency": 0.0, "drop": 0.0}), Choice("a", {"latency": -3.0, "drop": 0.6}),
               Choice("b", {"latency": -5.0, "drop": 2.0})],
              [Choice("keep", {"latency": 0.0, "drop": 0.0}), Choice("c", {"latency": -2.0, "drop": 0.3})]]
    for method in ("dp", "greedy"):
        sol = solve(groups, "latency", {"drop": 1.0}, method=method)
        assert sol is not None and sol.picks == (1, 1), method  # a + c: -5 ms for 0.9 points
    assert brute_force(groups, "latency", {"drop": 1.0}).picks == (1, 1)  # type: ignore[union-attr]


def test_solvers_are_deterministic_and_reject_unknown_names() -> None:
    rng = random.Random(7)
    groups = _instance(rng, 6, ("latency",), integer=False)
    a = solve(groups, "drop", {"latency": -8.0}, method="dp", seed=1)
    b = solve(groups, "drop", {"latency": -8.0}, method="dp", seed=2)
    assert a == b
    with pytest.raises(ValueError, match="unknown solver"):
        solve(groups, "drop", {"latency": -8.0}, method="evolutionary")
