"""Sensitivity + LUT -> a knapsack problem over the planner's units, and the choice back to actions.

Each unit becomes one group: "keep" (all zeros) plus every feasible action, with the
action's dev metric drop (points), latency delta (ms, from the LUT) and size delta (bytes).
Actions that do not pay are left out before solving: an action whose measured latency
delta is not negative makes the model no faster, so it only stays when a size budget is
set and it makes the model smaller.

The budgets decide the objective: with a speed-up or size budget the solver minimises the
predicted drop subject to latency <= base / speedup and size <= the size budget; with only
``max_drop`` it minimises latency subject to the summed drop <= max_drop.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .budget import Budgets
from .lut import Lut
from .sensitivity import SensitivityTable
from .solve import Choice
from .space import Action, Unit

KEEP = "keep"


@dataclasses.dataclass
class Problem:
    units: list[Unit]  # the units that have at least one usable action, in order
    groups: list[list[Choice]]
    objective: str
    limits: dict[str, float]
    not_paying: list[dict[str, Any]]

    def chosen(self, picks: tuple[int, ...]) -> list[tuple[Unit, Action]]:
        """The (unit, action) pairs a solution picks (keeps are left out)."""
        out = []
        for unit, group, p in zip(self.units, self.groups, picks):
            if group[p].label != KEEP:
                out.append((unit, next(a for a in unit.actions if a.label == group[p].label)))
        return out


def build_problem(units: list[Unit], sens: SensitivityTable, lut: Lut, budgets: Budgets) -> Problem:
    """Groups of choices and the limits implied by ``budgets`` (see the module docstring)."""
    groups: list[list[Choice]] = []
    kept_units: list[Unit] = []
    not_paying: list[dict[str, Any]] = []
    for unit in units:
        group = [Choice(KEEP, {"drop": 0.0, "latency": 0.0, "size": 0.0})]
        for action in unit.actions:
            row = sens.get(unit.name, action.label)
            timed = lut.entry(unit.name, action.label)
            if row is None or not row.feasible or row.drop is None or row.size_bytes is None \
                    or timed is None or timed.error is not None:
                continue
            latency = timed.delta_ms
            size = float(row.size_bytes - sens.base_size_bytes)
            if latency >= 0 and not (budgets.size_bytes is not None and size < 0):
                not_paying.append({"unit": unit.name, "action": action.label, "delta_ms": latency, "drop": row.drop})
                continue
            group.append(Choice(action.label, {"drop": row.drop, "latency": latency, "size": size}))
        if len(group) > 1:
            groups.append(group)
            kept_units.append(unit)
    limits: dict[str, float] = {}
    if budgets.speedup is not None:
        limits["latency"] = lut.base_ms / budgets.speedup - lut.base_ms
    if budgets.size_bytes is not None:
        limits["size"] = float(budgets.size_bytes - sens.base_size_bytes)
    objective = "drop"
    if not limits and budgets.max_drop is not None:
        objective, limits = "latency", {"drop": budgets.max_drop}
    return Problem(kept_units, groups, objective, limits, not_paying)


__all__ = ["KEEP", "Problem", "build_problem"]
