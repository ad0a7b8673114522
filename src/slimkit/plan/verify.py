"""Verification with accuracy-aware back-off: run the plan, measure it, revert until it holds.

The planned recipe runs on the dense model; its dev metric and its paired speed-up on the
serving runtime are measured (:func:`slimkit.plan.lut.check`, which also reports how far
the LUT's additive prediction was off). When the measured dev drop exceeds ``max_drop``,
the chosen action with the largest predicted drop is reverted and the plan re-measured,
for at most ``max_rounds`` reverts (as Intel Neural Compressor's autotune falls back
layer by layer for quantization). The test split is not looked at here: the planner
scores the final plan on test once, for the report only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..core import Context, Recipe
from .budget import Budgets
from .lut import Lut, check
from .sensitivity import SensitivityTable
from .space import Action, Unit, compose


@dataclasses.dataclass
class Verified:
    chosen: list[tuple[Unit, Action]]
    model: nn.Module
    recipe: dict[str, Any] | None  # None when every action was reverted
    rounds: list[dict[str, Any]]

    @property
    def last(self) -> dict[str, Any]:
        return self.rounds[-1]


def verify(base: nn.Module, chosen: Sequence[tuple[Unit, Action]], ctx: Context, *, lut: Lut,
           sens: SensitivityTable, budgets: Budgets, dev_points: Callable[[nn.Module], float], inputs: Any,
           name: str, max_rounds: int = 3, rounds: int = 5, iters: int = 5, threads: int | None = None,
           log: Callable[[str], None] = lambda _m: None) -> Verified:
    """Measure the plan and back off (see the module docstring); returns the final plan and every round."""
    chosen = list(chosen)
    history: list[dict[str, Any]] = []
    model, doc = base, None
    for r in range(max_rounds + 1):
        if not chosen:
            model, doc = base, None
            history.append({"round": r, "actions": [], "dev_metric": sens.base_metric, "dev_drop": 0.0,
                            "note": "every action reverted: the dense model"})
            break
        doc = compose([a for _, a in chosen], name=name,
                      description="written by slimkit plan (docs/plan.md)")
        model = Recipe.from_dict(doc).run(base, ctx)
        dev = dev_points(model)
        drop = sens.base_metric - dev
        pairs = [(u.name, a.label) for u, a in chosen]
        timing = check(lut, base, model, pairs, inputs, rounds=rounds, iters=iters, threads=threads)
        predicted_drop = sum(_drop(sens, u, a) for u, a in pairs)
        history.append({"round": r, "actions": [f"{u} / {a}" for u, a in pairs], "dev_metric": dev,
                        "dev_drop": drop, "predicted_drop": predicted_drop, "latency": timing})
        log(f"verify round {r}: dev drop {drop:.2f} (predicted {predicted_drop:.2f}), speed-up "
            f"{timing['measured_speedup']:.2f}x (predicted {timing['predicted_speedup']:.2f}x)")
        if budgets.max_drop is None or drop <= budgets.max_drop or r == max_rounds:
            break
        worst = max(range(len(chosen)), key=lambda i: (_drop(sens, *pairs[i]), -i))
        u, a = pairs[worst]
        history[-1]["reverted"] = f"{u} / {a}"
        log(f"verify: dev drop {drop:.2f} > max_drop {budgets.max_drop}: reverting {u} / {a}")
        del chosen[worst]
    return Verified(chosen, model, doc, history)


def _drop(sens: SensitivityTable, unit: str, action: str) -> float:
    row = sens.get(unit, action)
    return float(row.drop) if row is not None and row.drop is not None else 0.0


__all__ = ["Verified", "verify"]
