"""``plan(...)``: sensitivity -> latency table -> knapsack -> recipe -> verified report.

The one job behind ``slimkit plan`` (docs/plan.md). It writes into ``out_dir``:
``sensitivity.json`` (every action's dev drop and size), ``lut.json`` (every action's
latency delta on the runtime), ``plan.yaml`` (an ordinary recipe: ``slimkit compress
--recipe out_dir/plan.yaml`` runs it), and ``report.json`` / ``report.md`` (predicted next
to measured speed-up and metric, each back-off round, the LUT's prediction error).
Tuning reads the task's dev split only; the test split is scored once, on the final plan.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .. import zoo
from .._version import __version__
from ..core import ConfigError, MethodError
from ..core.api import atomic_write
from ..core.cpu import int8_isa
from .budget import Budgets, parse_budgets
from .jobs import SensitivityTrial, open_setup, plan_context, release_setup
from .lut import PlanRuntime, build_lut
from .problem import build_problem
from .report import render_markdown
from .sensitivity import SensitivityCache, apply_action, measure_sensitivity, points
from .solve import SOLVERS, solve
from .space import SpaceConfig, build_space
from .trials import check_parallel, open_executor
from .verify import verify

RUNTIMES = ("eager", "pt2e", "onnx")


def _write_json(path: Path, doc: Any) -> None:
    text = json.dumps(doc, indent=2, default=str)
    atomic_write(path, lambda p: Path(p).write_text(text + "\n"))


def plan(model_spec: str, task_name: str, budgets: Budgets | Sequence[str], *, out_dir: str | Path,
         runtime: PlanRuntime = "eager", batch_size: int = 1, seq_len: int = 128,
         space: SpaceConfig | None = None, solver: str = "dp", cache_dir: str | Path | None = None, seed: int = 0,
         rounds: int = 5, iters: int = 5, threads: int | None = None, max_backoff: int = 3,
         dev_limit: int | None = None, quiet: bool = False, workers: int | None = None,
         ray_address: str | None = None) -> dict[str, Any]:
    """Find, write and verify a recipe for ``model_spec`` that meets ``budgets`` (see the module docstring).

    ``workers`` / ``ray_address``: run the sensitivity trials on a local Ray instance with that many
    one-thread workers (started and shut down here) or on an existing cluster; by default they run
    serially in this process. Either way the plan is the same. Latency is always timed here, serially.
    """
    t0 = time.perf_counter()
    budgets = budgets if isinstance(budgets, Budgets) else parse_budgets(budgets)
    if budgets.empty():
        raise ConfigError("give at least one budget (speedup>=X, max_drop<=X or size<=N)", key="budget")
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; expected {', '.join(RUNTIMES)}", key="runtime")
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; expected {', '.join(SOLVERS)}", key="solver")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder", key="out")
    log = (lambda _m: None) if quiet else (lambda m: print(f"slimkit plan: {m}", file=sys.stderr, flush=True))
    check_parallel(workers, ray_address)  # no Ray, a dead address: refused before the model loads
    loaded = open_setup(model_spec, task_name, seed=seed, dev_limit=dev_limit)
    zm, task, ctx, base = loaded.zm, loaded.task, loaded.ctx, loaded.base
    out.mkdir(parents=True, exist_ok=True)
    inputs = zm.example_inputs(batch_size, seq_len) if zm.family == "text" else zm.example_inputs(batch_size)
    space = space or SpaceConfig()
    if runtime != "eager" and space.quantize_dynamic:  # its int8 modules run in PyTorch only
        log(f"quantize.dynamic left out on {runtime}: int8 there comes from the export step (not planned yet)")
        space = dataclasses.replace(space, quantize_dynamic=False)
    units = build_space(base, space)
    log(f"{model_spec}: {len(units)} unit(s), {sum(len(u.actions) for u in units)} candidate action(s)")

    dev_points, size_of = loaded.dev_points, loaded.size_of
    folder = Path(cache_dir) if cache_dir is not None else zoo.cache_dir() / "plan"
    cache = SensitivityCache(folder, loaded.setup.model_hash)
    data_key = f"{task_name}|dev|limit={dev_limit}|seed={seed}|slimkit={__version__}"
    try:
        with open_executor(workers, ray_address) as executor:  # Ray started here is shut down here, also on errors
            trials_on = executor.describe()
            sens = measure_sensitivity(base, units, ctx, evaluate=dev_points, size_of=size_of, data_key=data_key,
                                       cache=cache, log=log, executor=executor,
                                       trial=SensitivityTrial(loaded.setup), seed=seed)
    finally:
        release_setup(loaded.setup)  # the registry holds the model only while trials may run
    _write_json(out / "sensitivity.json", {"model": model_spec, "task": task_name, "split": "dev",
                                           "cache": str(cache.path), **sens.to_dict()})

    feasible = [(u, a) for u in units for a in u.actions if (row := sens.get(u.name, a.label)) and row.feasible]
    variants = ((u.name, a.label, apply_action(base, a, ctx)) for u, a in feasible)  # built one at a time
    lut = build_lut(base, variants, inputs, runtime, batch_size=batch_size, rounds=rounds, iters=iters,
                    threads=threads, log=log)
    _write_json(out / "lut.json", {"model": model_spec, **lut.to_dict()})

    problem = build_problem(units, sens, lut, budgets)
    solution = solve(problem.groups, problem.objective, problem.limits, method=solver, seed=seed) \
        if problem.groups else None
    if solution is not None and not problem.chosen(solution.picks):
        raise MethodError(f"the dense model already meets {_budget_text(budgets)} by the prediction; nothing to plan")
    if solution is None:
        fastest = lut.base_ms + sum(min(c.values["latency"] for c in g) for g in problem.groups)
        best = lut.base_ms / fastest if fastest > 0 else float("inf")
        raise MethodError(f"no plan in the search space meets {_budget_text(budgets)} (fastest predicted "
                          f"speed-up {best:.2f}x over {len(problem.groups)} unit(s)); widen the space or the budget")
    chosen = problem.chosen(solution.picks)
    predicted = {"drop": solution.totals["drop"], "speedup": lut.base_ms / (lut.base_ms + solution.totals["latency"]),
                 "size_bytes": sens.base_size_bytes + solution.totals["size"]}
    log(f"solver {solver}: {len(chosen)} action(s), predicted drop {predicted['drop']:.2f}, "
        f"speed-up {predicted['speedup']:.2f}x")

    result = verify(base, chosen, ctx, lut=lut, sens=sens, budgets=budgets, dev_points=dev_points, inputs=inputs,
                    name=f"plan-{zm.spec.split(':')[-1]}", max_rounds=max_backoff, rounds=rounds, iters=iters,
                    threads=threads, log=log)
    if result.recipe is not None:
        text = yaml.safe_dump(result.recipe, sort_keys=False)
        atomic_write(out / "plan.yaml", lambda p: Path(p).write_text(text))
    elif (out / "plan.yaml").exists():  # every action reverted: no plan, and no stale one from an earlier run
        (out / "plan.yaml").unlink()
    base_test = points(task.evaluate(base, zm, split="test"), task.metric)
    final_test = points(task.evaluate(result.model, zm, split="test"), task.metric) if result.chosen else base_test
    last = result.last
    measured = {"dev_drop": last["dev_drop"], "test_drop": base_test - final_test,
                "speedup": last["latency"]["measured_speedup"] if "latency" in last else 1.0,
                "size_bytes": size_of(result.model)}
    report = {
        "model": model_spec, "task": task_name, "metric": task.metric, "budgets": budgets.to_dict(),
        "runtime": runtime, "batch_size": batch_size, "seq_len": seq_len if zm.family == "text" else None,
        "solver": solver, "objective": problem.objective, "limits": problem.limits, "space": space.to_dict(),
        "units": len(units), "actions": sum(len(u.actions) for u in units),
        "sensitivity_evaluations": sens.evaluations, "trials_on": trials_on, "not_paying": problem.not_paying,
        "untimed": [f"{e.unit} / {e.action}" for e in lut.entries if e.error is not None],
        "base": {"dev": sens.base_metric, "test": base_test, "size_bytes": sens.base_size_bytes,
                 "latency_ms": lut.base_ms},
        "chosen": [{"unit": u.name, "action": a.label} for u, a in chosen],
        "final": [{"unit": u.name, "action": a.label} for u, a in result.chosen],
        "predicted": predicted, "measured": measured, "rounds": result.rounds,
        "lut_check": last.get("latency"), "meets": _meets(budgets, measured, sens.base_size_bytes),
        "plan_file": str(out / "plan.yaml") if result.recipe is not None else None, "recipe": result.recipe,
        "seconds": round(time.perf_counter() - t0, 2), "int8_isa": int8_isa().to_dict(),
        "date": datetime.date.today().isoformat(),
    }
    _write_json(out / "report.json", report)
    atomic_write(out / "report.md", lambda p: Path(p).write_text(render_markdown(report)))
    return report


def _budget_text(b: Budgets) -> str:
    parts = [f"speedup>={b.speedup}" if b.speedup is not None else "",
             f"max_drop<={b.max_drop}" if b.max_drop is not None else "",
             f"size<={b.size_bytes}B" if b.size_bytes is not None else ""]
    return ", ".join(p for p in parts if p)


def _meets(b: Budgets, measured: dict[str, Any], base_size: int) -> dict[str, bool]:
    out: dict[str, bool] = {}
    if b.speedup is not None:
        out["speedup"] = measured["speedup"] >= b.speedup
    if b.max_drop is not None:
        out["max_drop_dev"] = measured["dev_drop"] <= b.max_drop
        out["max_drop_test"] = measured["test_drop"] <= b.max_drop
    if b.size_bytes is not None:
        out["size"] = measured["size_bytes"] <= b.size_bytes
    return out


__all__ = ["RUNTIMES", "plan", "plan_context"]
