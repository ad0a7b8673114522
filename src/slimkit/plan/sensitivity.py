"""Sensitivity: the dev-split metric drop (and the size) of every candidate action, alone.

For each (unit, action) the one-step recipe is applied to a copy of the model
(:meth:`Recipe.run` never edits the caller's model) and scored by ``evaluate``, which the
planner binds to the task's DEV split (never test). Results are cached on disk in one JSON
file per model, keyed by a hash of the model's weights, the action's recipe step and the
data key (task, split, limit), so a second run (another budget, another runtime) re-uses
them and evaluates nothing. An action the method refuses on this model (a
:class:`SlimkitError`) is recorded as infeasible, with the reason, and left out of the search.
The trials not in the cache run on an executor (plan/trials.py): serially in-process, or in
parallel on Ray workers, with the same per-trial seeds and so the same results.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import Context, Recipe, SlimkitError
from ..core.api import atomic_write
from .space import Action, Unit
from .trials import Executor, SerialExecutor, trial_seed

Evaluate = Callable[[nn.Module], float]
SizeOf = Callable[[nn.Module], int]
CACHE_VERSION = 1


def points(metrics: dict[str, float], metric: str) -> float:
    """The task's headline metric in points: ``<metric>_x100`` when the task reports it, x100 for
    fractions (accuracy, top5, spearman in [-1, 1] without an x100 twin), else the value itself."""
    if f"{metric}_x100" in metrics:
        return float(metrics[f"{metric}_x100"])
    value = float(metrics[metric])
    return 100.0 * value if metric in ("accuracy", "top5", "spearman", "pearson", "agreement") else value


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the model's architecture text and every state tensor (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(repr(model).encode())
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = (t.dequantize() if t.is_quantized else t).detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def action_key(action: Action, data_key: str) -> str:
    text = json.dumps({"steps": list(action.steps), "data": data_key, "v": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class SensitivityCache:
    """``{key: entry}`` in ``folder/sensitivity-<model hash>.json``, written atomically after each entry."""

    def __init__(self, folder: Path, model_hash: str) -> None:
        self.path = Path(folder) / f"sensitivity-{model_hash[:24]}.json"
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                if isinstance(doc, dict) and doc.get("version") == CACHE_VERSION:
                    self.entries = dict(doc.get("entries", {}))
            except ValueError:  # a torn or foreign file: start afresh (it is only a cache)
                self.entries = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        text = json.dumps({"version": CACHE_VERSION, "entries": self.entries}, indent=1, sort_keys=True)
        atomic_write(self.path, lambda p: Path(p).write_text(text + "\n"))


@dataclasses.dataclass
class SensitivityRow:
    """One action's result: ``drop`` in metric points (positive = worse), ``size_bytes`` of the
    changed model; ``error`` says why an infeasible action was refused."""

    unit: str
    action: str
    metric: float | None
    drop: float | None
    size_bytes: int | None
    cached: bool
    error: str | None = None

    @property
    def feasible(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class SensitivityTable:
    base_metric: float
    base_size_bytes: int
    rows: list[SensitivityRow]
    evaluations: int  # how many evaluations this call ran (0 when everything came from the cache)

    def get(self, unit: str, action: str) -> SensitivityRow | None:
        return next((r for r in self.rows if r.unit == unit and r.action == action), None)

    def to_dict(self) -> dict[str, Any]:
        return {"base_metric": self.base_metric, "base_size_bytes": self.base_size_bytes,
                "evaluations": self.evaluations, "rows": [dataclasses.asdict(r) for r in self.rows]}


def apply_action(model: nn.Module, action: Action, ctx: Context) -> nn.Module:
    """A changed copy of ``model``: the action's steps run as a recipe (the model itself is untouched)."""
    return Recipe.from_dict({"name": action.label, "steps": list(action.steps)}).run(model, ctx)


@dataclasses.dataclass
class LocalTrial:
    """The in-process trial: score ``action`` applied to ``model`` (the planner sends a
    :class:`~slimkit.plan.jobs.SensitivityTrial` instead, which rebuilds the model from its spec)."""

    model: nn.Module
    ctx: Context
    evaluate: Evaluate
    size_of: SizeOf

    def __call__(self, action: Action) -> dict[str, Any]:
        try:
            changed = apply_action(self.model, action, self.ctx) if action.steps else self.model
        except SlimkitError as exc:
            return {"error": str(exc).replace("\n", " ")}
        return {"metric": float(self.evaluate(changed)), "size_bytes": int(self.size_of(changed))}


def measure_sensitivity(model: nn.Module, units: Sequence[Unit], ctx: Context, *, evaluate: Evaluate,
                        size_of: SizeOf, data_key: str, cache: SensitivityCache | None = None,
                        log: Callable[[str], None] = lambda _m: None, executor: Executor | None = None,
                        trial: Callable[[Action], dict[str, Any]] | None = None,
                        seed: int = 0) -> SensitivityTable:
    """Score every action of every unit alone against the unchanged model (see the module docstring).

    Cached trials are not dispatched; the others go to ``executor`` (serial by default) as
    ``trial(action)`` (default: :class:`LocalTrial` on ``model``), each under a seed derived from
    ``seed`` and its cache key, and each result is cached as soon as it arrives.
    """
    executor = executor or SerialExecutor()
    trial = trial or LocalTrial(model, ctx, evaluate, size_of)
    keep = Action("keep", ())
    jobs = [("(dense model)", keep)] + [(u.name, a) for u in units for a in u.actions]
    names = ["(dense model)"] + [f"{u} / {a.label}" for u, a in jobs[1:]]
    keys = [action_key(a, data_key) for _, a in jobs]
    entries: dict[str, dict[str, Any]] = {}
    cached: set[str] = set()
    todo: dict[str, int] = {}  # key -> first job with it, in input order
    for i, key in enumerate(keys):
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            entries[key] = hit
            cached.add(key)
        else:
            todo.setdefault(key, i)
    order = list(todo.values())
    if order:
        log(f"sensitivity: {len(order)} trial(s) on {executor.describe()}, {len(cached)} from the cache")

    def arrived(j: int, entry: dict[str, Any]) -> None:
        key = keys[order[j]]
        entries[key] = entry
        if cache is not None:
            cache.put(key, entry)

    executor.map(trial, [jobs[i][1] for i in order], names=[names[i] for i in order],
                 seeds=[trial_seed(seed, keys[i]) for i in order], on_result=arrived)
    runs = sum(1 for i in order if "error" not in entries[keys[i]])
    base = entries[keys[0]]
    if "error" in base:  # pragma: no cover - the unchanged model cannot be refused
        raise SlimkitError(base["error"])
    rows = []
    for (unit, action), name, key in zip(jobs[1:], names[1:], keys[1:]):
        entry = entries[key]
        metric = entry.get("metric")
        drop = None if metric is None else base["metric"] - metric
        rows.append(SensitivityRow(unit, action.label, metric, drop, entry.get("size_bytes"), key in cached,
                                   entry.get("error")))
        log(f"sensitivity {name}: "
            + (f"drop {drop:+.2f}" if drop is not None else f"refused ({entry['error'][:80]})")
            + (" (cached)" if key in cached else ""))
    return SensitivityTable(base["metric"], int(base["size_bytes"]), rows, runs)


__all__ = ["LocalTrial", "SensitivityCache", "SensitivityRow", "SensitivityTable", "action_key", "apply_action",
           "measure_sensitivity", "points", "weights_hash"]
