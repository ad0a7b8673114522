"""Pick one option per planning unit: a multiple-choice knapsack, solved exactly (DP) or greedily.

Pure functions over plain numbers, no torch. A problem is a list of *groups* (one per
unit); each group lists :class:`Choice` s (its first is usually "keep"), each with additive
``values`` such as ``{"drop": 0.4, "latency": -0.8, "size": -12000}``. A solution picks
exactly one choice per group, minimising the summed ``objective`` subject to
``sum(values[k]) <= limits[k]`` for every constrained key.

- :func:`solve_dp`: dynamic programming over discretised constrained costs. Costs are
  shifted so each group's cheapest choice costs 0 (latency deltas are negative), then
  rounded UP to bins of width ``steps[k]`` (default: the remaining capacity / ``resolution``),
  so every plan it returns is truly feasible; it is optimal for the rounded costs (and
  exactly optimal when the costs are multiples of the bin width).
- :func:`solve_greedy`: from the best-objective choice per group, repeatedly take the move
  with the least objective increase per unit of relief on the violated constraints, then
  take any move that lowers the objective and keeps the plan feasible.
- :func:`brute_force`: every combination (tests and tiny problems).

All three are deterministic: ties go to the lower group and choice index. The ``seed``
of :func:`solve` is the seam for stochastic solvers (an evolutionary search over the joint
space is planned, docs/plan.md); the DP and greedy solvers ignore it.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Callable

_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Choice:
    """One option of one unit: a label and its additive values (keys shared by every choice)."""

    label: str
    values: Mapping[str, float]


Groups = Sequence[Sequence[Choice]]


@dataclasses.dataclass(frozen=True)
class Solution:
    """The chosen index per group and the summed values."""

    picks: tuple[int, ...]
    totals: dict[str, float]


def totals(groups: Groups, picks: Sequence[int]) -> dict[str, float]:
    """Summed values of one choice per group."""
    keys = sorted({k for g in groups for c in g for k in c.values})
    return {k: float(sum(g[p].values.get(k, 0.0) for g, p in zip(groups, picks))) for k in keys}


def feasible(sums: Mapping[str, float], limits: Mapping[str, float]) -> bool:
    return all(sums.get(k, 0.0) <= v + _EPS * max(1.0, abs(v)) for k, v in limits.items())


def _check(groups: Groups, objective: str, limits: Mapping[str, float]) -> None:
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("every group needs at least one choice")
    for g in groups:
        for c in g:
            missing = {objective, *limits} - set(c.values)
            if missing:
                raise ValueError(f"choice {c.label!r} lacks values {sorted(missing)}")


def brute_force(groups: Groups, objective: str, limits: Mapping[str, float]) -> Solution | None:
    """The optimum by enumeration (exponential: tests and tiny problems only)."""
    _check(groups, objective, limits)
    best: tuple[float, tuple[int, ...]] | None = None
    for picks in itertools.product(*(range(len(g)) for g in groups)):
        sums = totals(groups, picks)
        if feasible(sums, limits) and (best is None or sums[objective] < best[0] - _EPS):
            best = (sums[objective], picks)
    return None if best is None else Solution(best[1], totals(groups, best[1]))


def solve_dp(groups: Groups, objective: str, limits: Mapping[str, float], *, resolution: int | None = None,
             steps: Mapping[str, float] | None = None) -> Solution | None:
    """Exact DP over rounded-up constrained costs (see the module docstring); None when infeasible."""
    _check(groups, objective, limits)
    keys = sorted(limits)
    res = resolution if resolution is not None else (512 if len(keys) <= 1 else 64)
    low = {k: [min(c.values[k] for c in g) for g in groups] for k in keys}
    cap = {k: limits[k] - sum(low[k]) for k in keys}
    if any(cap[k] < -_EPS * max(1.0, abs(limits[k])) for k in keys):
        return None
    width = {k: (steps[k] if steps and k in steps else (cap[k] / res if cap[k] > _EPS else 1.0)) for k in keys}
    bins = {k: math.floor(max(cap[k], 0.0) / width[k] + _EPS) for k in keys}

    def cost(gi: int, c: Choice) -> tuple[int, ...]:
        return tuple(math.ceil((c.values[k] - low[k][gi]) / width[k] - _EPS) for k in keys)

    # layer i: state (binned costs so far) -> (objective, previous state, choice index)
    layers: list[dict[tuple[int, ...], tuple[float, tuple[int, ...], int]]] = []
    frontier: dict[tuple[int, ...], float] = {tuple(0 for _ in keys): 0.0}
    for gi, group in enumerate(groups):
        nxt: dict[tuple[int, ...], tuple[float, tuple[int, ...], int]] = {}
        binned = [cost(gi, c) for c in group]
        for state, value in frontier.items():
            for ci, c in enumerate(group):
                ns = tuple(s + d for s, d in zip(state, binned[ci]))
                if any(n > bins[k] for n, k in zip(ns, keys)):
                    continue
                v = value + c.values[objective]
                if ns not in nxt or v < nxt[ns][0] - _EPS:
                    nxt[ns] = (v, state, ci)
        if not nxt:
            return None
        layers.append(nxt)
        frontier = {s: t[0] for s, t in nxt.items()}
    state = min(frontier, key=lambda s: (frontier[s], s))
    picks: list[int] = []
    for layer in reversed(layers):
        _, prev, ci = layer[state]
        picks.append(ci)
        state = prev
    out = tuple(reversed(picks))
    return Solution(out, totals(groups, out))


def solve_greedy(groups: Groups, objective: str, limits: Mapping[str, float]) -> Solution | None:
    """Marginal-ratio greedy (see the module docstring); None when no move reaches feasibility."""
    _check(groups, objective, limits)
    picks = [min(range(len(g)), key=lambda i, g=g: (g[i].values[objective], i)) for g in groups]
    scale = {k: max(abs(v), _EPS) for k, v in limits.items()}
    for _ in range(sum(len(g) for g in groups) * len(groups) + 1):
        sums = totals(groups, picks)
        violated = [k for k, v in limits.items() if not feasible({k: sums[k]}, {k: v})]
        if not violated:
            break
        best: tuple[float, int, int] | None = None
        for gi, g in enumerate(groups):
            cur = g[picks[gi]].values
            for ci, c in enumerate(g):
                relief = sum((cur[k] - c.values[k]) / scale[k] for k in violated)
                if ci == picks[gi] or relief <= _EPS:
                    continue
                ratio = (c.values[objective] - cur[objective]) / relief
                if best is None or ratio < best[0] - _EPS:
                    best = (ratio, gi, ci)
        if best is None:
            return None
        picks[best[1]] = best[2]
    if not feasible(totals(groups, picks), limits):
        return None
    while True:  # improve: lower the objective while staying feasible
        best_gain: tuple[float, int, int] | None = None
        for gi, g in enumerate(groups):
            for ci, c in enumerate(g):
                gain = g[picks[gi]].values[objective] - c.values[objective]
                if gain <= _EPS:
                    continue
                trial = [*picks[:gi], ci, *picks[gi + 1:]]
                if feasible(totals(groups, trial), limits) and (best_gain is None or gain > best_gain[0] + _EPS):
                    best_gain = (gain, gi, ci)
        if best_gain is None:
            break
        picks[best_gain[1]] = best_gain[2]
    out = tuple(picks)
    return Solution(out, totals(groups, out))


Solver = Callable[[Groups, str, Mapping[str, float]], "Solution | None"]
SOLVERS: dict[str, Solver] = {"dp": solve_dp, "greedy": solve_greedy}  # "evolutionary" joins here later


def solve(groups: Groups, objective: str, limits: Mapping[str, float], *, method: str = "dp",
          seed: int = 0) -> Solution | None:
    """Dispatch to a solver by name (``seed`` is for stochastic solvers; dp and greedy are exact/deterministic)."""
    if method not in SOLVERS:
        raise ValueError(f"unknown solver {method!r}; expected one of {', '.join(SOLVERS)}")
    del seed  # no stochastic solver yet
    return SOLVERS[method](groups, objective, limits)


__all__ = ["Choice", "SOLVERS", "Solution", "brute_force", "feasible", "solve", "solve_dp", "solve_greedy", "totals"]
