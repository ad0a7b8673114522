"""Dependency analysis for structured pruning, read off the traced ATen graph.

Why a graph and not per-model rules: which tensor slices must be removed together is a
property of the data flow (a residual add ties two producers' channels, a ``cat`` offsets
them, a depthwise conv passes them through, a head split makes 64 channels one unit).
Reading it from ``torch.export`` works for any model that exports, and anything the
analysis does not understand makes the affected channels *unprunable* instead of guessed.

Method (per-element channel labels). Every parameter/buffer axis that meets the data flow
gets one integer id per position. Every traced value carries a label array with the
value's rank: each dim is either 1 (labels constant along it) or full size, entries are
ids or -1 (no channel). Ops propagate labels; wherever two ids meet elementwise (an add,
the contraction of a matmul, a Linear's input against its weight's dim 1) they are
unioned. Afterwards each union-find class (an *atom*) is one removable unit: removing it
deletes every (param, dim, position) whose id is in it. A reshape that splits a channel dim
into two varying dims (``[B,T,H*d] -> [B,T,H,d]``) joins each outer slice into one atom, so
attention heads become units. With grouped-query attention the K/V head and the Q heads
that share it meet in the attention matmul and become one atom: pruning removes a KV head
together with its query heads (``num_key_value_groups`` stays constant).

Frozen (never pruned): ids that reach a graph output, ids reduced over by a normalisation
(LayerNorm / RMSNorm / GroupNorm statistics change if a channel leaves, even a zero one),
ids selected or indexed by constants, and every id entering an op the analysis does not know.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from torch import nn

from ..core import ModelSpecError
from ..core.context import Batch, batch_args, forward_params
from .propagate import Axis, _Labels, _Propagator, _split


@dataclasses.dataclass
class Group:
    """Coupled slices that are pruned together; ``members[axis][pos]`` is the unit index (-1: not this group).

    Units are numbered 0..n_units-1 in a stable order (first axis, lowest position first), so
    kept-unit lists in a record mean the same thing on every trace of the same model.
    """

    name: str
    n_units: int
    members: dict[Axis, np.ndarray]
    heads: bool  # units are attention heads (formed by a head split reshape)

    @property
    def modules(self) -> list[str]:
        return sorted({_split(p)[0] for p, _ in self.members})

    def unit_size(self, axis: Axis) -> np.ndarray:
        """Positions per unit on ``axis`` ([n_units])."""
        m = self.members[axis]
        return np.bincount(m[m >= 0], minlength=self.n_units)


@dataclasses.dataclass
class DependencyGraph:
    """Prunable groups of one model, plus why other channels are frozen (for explanations)."""

    groups: list[Group]
    frozen_reasons: dict[str, int]  # reason -> number of ids frozen for it
    axis_sizes: dict[Axis, int]

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no prunable group {name!r}; groups: {[g.name for g in self.groups]}")

    def plan(self, kept_units: dict[str, list[int] | np.ndarray]) -> dict[str, dict[int, list[int]]]:
        """Kept positions per parameter and dim, from kept unit indices per group.

        Groups not named keep everything. Only axes that lose positions appear.
        """
        drop: dict[Axis, np.ndarray] = {}
        for g in self.groups:
            if g.name not in kept_units:
                continue
            kept = np.zeros(g.n_units, dtype=bool)
            kept[np.asarray(kept_units[g.name], dtype=np.int64)] = True
            for axis, m in g.members.items():
                d = drop.setdefault(axis, np.zeros(self.axis_sizes[axis], dtype=bool))
                d |= (m >= 0) & ~kept[np.maximum(m, 0)]
        out: dict[str, dict[int, list[int]]] = {}
        for (param, dim), d in drop.items():
            if d.any():
                out.setdefault(param, {})[dim] = np.flatnonzero(~d).tolist()
        return out


def trace(model: nn.Module, example_inputs: Batch) -> torch.export.ExportedProgram:
    """``torch.export`` the model in eval mode; a failure is a :class:`ModelSpecError` saying why."""
    args, kwargs = batch_args(example_inputs)
    if "use_cache" in forward_params(model) and "use_cache" not in kwargs:
        # HF decoders return a KV-cache object torch.export cannot output; the graph the
        # analysis needs is the same without it
        kwargs = {**kwargs, "use_cache": False}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # nn.LSTM/GRU refresh their _flat_weights list while traced: harmless
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
            return torch.export.export(model, args, kwargs, strict=False)
    except Exception as exc:  # export raises many types
        raise ModelSpecError(f"structured pruning needs a model torch.export can trace; export failed: {exc}") from exc
    finally:
        model.train(was_training)


def analyze(model: nn.Module, example_inputs: Batch) -> DependencyGraph:
    """Trace ``model`` on ``example_inputs`` and return its prunable groups."""
    ep = trace(model, example_inputs)
    prop = _Propagator(ep, model)
    prop.run()
    return _groups(prop.L)


def _groups(L: _Labels) -> DependencyGraph:
    n = len(L.parent)
    root = np.asarray([L.find(i) for i in range(n)], dtype=np.int64)
    frozen_roots = {int(root[i]) for i in L.frozen}
    blocked_roots = {int(root[i]) for i in L.blocked}
    reasons: dict[str, int] = {}
    for reason in L.frozen.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    # groups: atoms connected through a shared axis (e.g. both halves of a concat consumer)
    atoms = sorted(set(root.tolist()) - frozen_roots)
    gparent = {a: a for a in atoms}

    def gfind(a: int) -> int:
        while gparent[a] != a:
            gparent[a] = gparent[gparent[a]]
            a = gparent[a]
        return a

    for ids in L.axes.values():
        live = [int(r) for r in np.unique(root[ids]) if int(r) in gparent]
        for r in live[1:]:
            ra, rb = gfind(live[0]), gfind(r)
            if ra != rb:
                gparent[max(ra, rb)] = min(ra, rb)
    by_group: dict[int, list[int]] = {}
    for a in atoms:
        by_group.setdefault(gfind(a), []).append(a)
    axes_of: dict[int, list[Axis]] = {}
    for axis, ids in L.axes.items():
        for gid in {gfind(int(r)) for r in np.unique(root[ids]).tolist() if int(r) in gparent}:
            axes_of.setdefault(gid, []).append(axis)
    groups: list[Group] = []
    names: set[str] = set()
    sizes = {axis: len(ids) for axis, ids in L.axes.items()}
    for gid, members_atoms in sorted(by_group.items(), key=lambda kv: min(kv[1])):
        aset = set(members_atoms)
        members: dict[Axis, np.ndarray] = {}
        index: dict[int, int] = {}
        for axis in axes_of.get(gid, []):  # creation order = graph order
            r = root[L.axes[axis]]
            members[axis] = r
            for a in r.tolist():
                if a in aset and a not in index:
                    index[a] = len(index)
        order = list(index)
        for axis, roots_on_axis in members.items():
            members[axis] = np.asarray([index.get(a, -1) for a in roots_on_axis.tolist()], dtype=np.int64)
        first = next(iter(members))[0]
        name = _split(first)[0] or first
        base, k = name, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.add(name)
        groups.append(Group(name=name, n_units=len(order), members=members,
                            heads=bool(aset & blocked_roots)))
    return DependencyGraph(groups=groups, frozen_reasons=reasons, axis_sizes=sizes)


__all__ = ["Axis", "DependencyGraph", "Group", "analyze", "trace"]
