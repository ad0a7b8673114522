"""Structured pruning methods: ``prune.channel`` (channels / neurons) and ``prune.heads``.

Both trace the model (:mod:`slimkit.prune.graph`), score every unit of every selected
group, keep the best units (:mod:`slimkit.prune.allocation`) and slice every coupled
tensor (:mod:`slimkit.prune.surgery`). The record stores the slicing plan (kept
positions per parameter and dim), so the replay needs neither data nor a trace.

Group selection: a group is acted on when a module that *produces* its units (Linear /
Conv output channels, HF Conv1D, Embedding width) matches the targets, so targeting
``classifier.*`` prunes the classifier's own neurons, not the features feeding it. ``prune.channel`` acts on channel groups (conv channels, Linear neurons such
as a transformer FFN's intermediate size); ``prune.heads`` on attention-head groups.

Importance of a unit: the criterion named by ``importance``, looked up in
:data:`slimkit.prune.importance.CRITERIA` (pure functions of a group's tensors; what they
read is gathered by :mod:`slimkit.prune.unit_inputs`). The weight criteria score every
coupled slice (producer rows, consumer columns, norm scales), summed per unit within each
tensor, each tensor's scores divided by their mean (coupled tensors have different
scales), then summed; ``output_norm`` / ``input_norm`` keep only the producers' output rows
/ the consumers' input columns, and ``entropy`` (Luo & Wu 2017) scores the producers'
output activations on ``ctx.calib_data`` (conv maps averaged over space first). Taylor needs
gradients: ``ctx.loss_fn`` over ``ctx.train_data`` (at most ``calib_batches``), or, with
no loss given or with ``grad_source: output``, the sum of squares of the model's first
output tensor over ``ctx.calib_data`` (a data-only proxy for "how much the output depends on
this unit"). The proxy can rank better than the task loss: a trained model fits most of its
training samples, so their loss gradients are small and noisy, while the output's energy
moves with every unit that shapes it (measured on EfficientNet-Lite0's head conv:
docs/pruning.md#importance-criteria-and-the-data-they-need).

``prune.heads`` also offers ``importance="head"``, the head importance of Michel et al.
2019: ``E_batches |dL/d xi_h|`` for a gate ``xi_h`` on each head's context output, read off
the output projection's weight gradient per batch (:func:`importance.head_gate_scores`);
the same data rules as Taylor apply.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core import (
    Context,
    MethodConfig,
    MethodError,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from ..core.context import call_model
from ..core.record import index_list
from ..core.targets import check_patterns
from . import allocation, importance, recurrent
from .graph import DependencyGraph, Group, analyze
from .surgery import Plan, check_plan, slice_params
from .unit_inputs import (
    GradSource,
    gradients,
    group_inputs,
    head_gate_importance,
    head_gates,
    head_projections,
    producer_activations,
    producers,
)

# Names of importance.CRITERIA each method accepts (the Literal is what YAML and list-methods show).
Criterion = Literal["l1", "l2", "taylor", "fpgm", "bn_scale", "output_norm", "input_norm", "entropy", "random"]
HeadCriterion = Literal["l1", "l2", "taylor", "head", "random"]


@method_config
class ChannelPrune(MethodConfig):
    """Remove conv channels / Linear neurons (physically) with dependency-aware surgery."""

    kind = "prune.channel"
    stage = "shrink"

    ratio: float = 0.3
    importance: Criterion = "l1"
    scope: Literal["uniform", "global"] = "uniform"
    round_to: int = 1
    min_keep: int = 1
    per_group_ratio: dict[str, float] | None = None
    calib_batches: int = 8
    # gradient importance (taylor): "loss" = ctx.loss_fn on ctx.train_data when both are set,
    # else the output proxy; "output" = always sum(output**2) on ctx.calib_data
    grad_source: GradSource = "loss"

    def validate(self) -> None:
        self._require(0.0 <= self.ratio < 1.0, "ratio", "a float in [0, 1)", self.ratio)
        self._require(self.round_to >= 1, "round_to", "an int >= 1", self.round_to)
        self._require(self.min_keep >= 1, "min_keep", "an int >= 1", self.min_keep)
        self._require(self.calib_batches >= 1, "calib_batches", "an int >= 1", self.calib_batches)
        self._require(self.importance in importance.CRITERIA, "importance", "a registered criterion", self.importance)
        check_patterns(self.per_group_ratio or {}, "per_group_ratio")


@method_config
class HeadPrune(MethodConfig):
    """Remove whole attention heads (a KV head goes with its query heads under GQA)."""

    kind = "prune.heads"
    stage = "shrink"

    ratio: float = 0.25
    heads_per_group: int | None = None  # remove exactly this many units per head group (overrides ratio)
    # "head": Michel et al. 2019 gate gradient, E_batches |sum over the head of x_h * dL/dx_h|
    importance: HeadCriterion = "l1"
    calib_batches: int = 8
    grad_source: GradSource = "loss"  # as for prune.channel (taylor and head importance)

    def validate(self) -> None:
        self._require(0.0 <= self.ratio < 1.0, "ratio", "a float in [0, 1)", self.ratio)
        self._require(self.heads_per_group is None or self.heads_per_group >= 0, "heads_per_group",
                      "an int >= 0 or null", self.heads_per_group)
        self._require(self.calib_batches >= 1, "calib_batches", "an int >= 1", self.calib_batches)


# -- scoring ---------------------------------------------------------------------------------
def example_batch(ctx: Context, method: str) -> Any:
    if ctx.example_inputs is not None:
        return ctx.example_inputs
    if ctx.calib_data is not None:
        for batch in ctx.calib_data:
            return batch
    raise MethodError(f"{method} traces the model: set Context.example_inputs (or calib_data)")


def group_scores(model: nn.Module, group: Group, criterion: str, grads: dict[str, torch.Tensor] | None = None,
                 seed: int = 0, acts: tuple[tuple[torch.Tensor, torch.Tensor], ...] = (),
                 gates: torch.Tensor | None = None) -> torch.Tensor:
    """One score per unit of ``group`` under ``criterion`` (looked up in ``importance.CRITERIA``)."""
    inputs = group_inputs(model, group, seed=seed, grads=grads, acts=acts, gates=gates)
    return importance.score_group(criterion, inputs)


def score_groups(model: nn.Module, groups: list[Group], criterion: str, ctx: Context, batches: int, method: str,
                 source: GradSource) -> dict[str, torch.Tensor]:
    """Scores of every group: gathers what the criterion ``needs`` (gradients, activations or
    head gates) once for all groups, then scores each group through the registry."""
    needs = importance.get_criterion(criterion).needs
    grads = gradients(model, ctx, batches, method, source) if needs == "grads" else None
    acts = producer_activations(model, groups, ctx, batches, method) if needs == "acts" else {}
    gates = head_gates(model, groups, ctx, batches, method, source) if needs == "gates" else {}
    return {g.name: group_scores(model, g, criterion, grads, ctx.seed, acts.get(g.name, ()), gates.get(g.name))
            for g in groups}


def selected_groups(model: nn.Module, graph: DependencyGraph, targets: Targets, heads: bool) -> list[Group]:
    """Groups of the wanted kind whose producing module matches ``targets`` (any module if none produces)."""
    out = []
    for g in graph.groups:
        if g.heads != heads:
            continue
        names = producers(model, g) or g.modules
        if any(targets.matches(name, model.get_submodule(name)) for name in names):
            out.append(g)
    return out


def unsplit_attention(model: nn.Module, targets: Targets) -> str:
    """Why no head group was found: the targeted attention modules the analysis could not split into heads."""
    found = []
    for name, m in targets.iter(model):
        if isinstance(m, nn.MultiheadAttention):
            found.append(f"{name!r} (nn.MultiheadAttention: it derives head_dim from embed_dim, so its "
                         "inner width cannot shrink; no per-head layout in the traced graph)")
        elif "Attention" in type(m).__name__ and any(isinstance(getattr(m, a, None), int) for a in
                                                     ("num_heads", "num_attention_heads", "n_heads", "n_head")):
            found.append(f"{name!r} ({type(m).__name__}: not a known attention layout)")
    if not found:
        return "the model has no attention layer"
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return "attention modules whose heads could not be separated: " + ", ".join(found[:3]) + more


# -- shared run / record / replay --------------------------------------------------------------
def _run(model: nn.Module, graph: DependencyGraph, kept: dict[str, torch.Tensor], batch: Any,
         kind: str) -> Record:
    plan = graph.plan({k: v.tolist() for k, v in kept.items()})
    before = sum(p.numel() for p in model.parameters())
    was_training = model.training
    with torch.no_grad():
        ref = _shapes(call_model(model.eval(), batch))
    slice_params(model, plan)
    with torch.no_grad():
        try:
            got = _shapes(call_model(model, batch))
        except Exception as exc:  # any failure here is a surgery bug to report
            raise MethodError(f"{kind}: the pruned model no longer runs ({exc}); please report this model") from exc
        finally:
            model.train(was_training)
    if got != ref:
        raise MethodError(f"{kind}: pruning changed the output shapes {ref} -> {got}")
    after = sum(p.numel() for p in model.parameters())
    groups = {name: {"kept": idx.tolist(), "units": graph.group(name).n_units} for name, idx in kept.items()}
    removed = sum(g["units"] - len(g["kept"]) for g in groups.values())
    return Record(
        kind=kind,
        data={"plan": _plan_json(plan), "groups": groups},
        summary={"params_before": before, "params_after": after, "groups": len(groups), "units_removed": removed},
    )


def _shapes(out: Any) -> list[tuple[int, ...]]:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [s for v in out for s in _shapes(v)]
    return []


def _plan_json(plan: Plan) -> dict[str, dict[str, list[int]]]:
    return {p: {str(d): list(map(int, k)) for d, k in dims.items()} for p, dims in plan.items()}


def replay_plan(model: nn.Module, record: Record) -> None:
    """Recreate the pruned shapes from ``record.data['plan']`` (values are overwritten by the load).

    The plan comes from a file: its form, dims and kept indices are checked before any slicing.
    """
    raw = record.data.get("plan", {})
    if not isinstance(raw, dict) or not all(isinstance(d, dict) for d in raw.values()):
        raise MethodError(f"{record.kind}: 'plan' must map parameter names to {{dim: kept indices}}, "
                          f"got {type(raw).__name__}")
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    plan: Plan = {}
    for fqn, dims in raw.items():
        if fqn not in state:
            raise MethodError(f"pruning record names {fqn!r}, which this model does not have")
        shape = state[fqn].shape
        plan[fqn] = {}
        for d, kept in dims.items():
            if not (isinstance(d, str) and d.isdigit() and int(d) < len(shape)):
                raise MethodError(f"pruning record for {fqn!r}: dim {d!r} does not fit shape {tuple(shape)}")
            plan[fqn][int(d)] = index_list(kept, shape[int(d)], f"pruning record for {fqn!r} dim {d}")
    check_plan(model, plan)
    slice_params(model, plan)


# -- handlers ------------------------------------------------------------------------------
@register_method(ChannelPrune)
def channel_prune(model: nn.Module, config: ChannelPrune, targets: Targets, ctx: Context) -> Record:
    batch = example_batch(ctx, config.kind)
    graph = analyze(model, batch)
    groups = selected_groups(model, graph, targets, heads=False)
    if not groups:
        raise MethodError(f"{config.kind}: no prunable channel group among the targets ({targets.to_dict()}); "
                          f"frozen channels: {graph.frozen_reasons}")
    scores = score_groups(model, groups, config.importance, ctx, config.calib_batches, config.kind, config.grad_source)
    kept = allocation.allocate(scores, config.ratio, mode=config.scope, per_group_ratio=config.per_group_ratio,
                               round_to=config.round_to, min_keep=config.min_keep)
    # an nn.LSTM/GRU has one hidden_size: the same unit count in every layer and direction
    kept = recurrent.equalize_kept(model, groups, scores, kept, config.round_to, config.min_keep)
    return _run(model, graph, kept, batch, config.kind)


@register_method(HeadPrune)
def head_prune(model: nn.Module, config: HeadPrune, targets: Targets, ctx: Context) -> Record:
    converted = [n for n, m in targets.iter(model) if getattr(m, "converted_attention", False)]
    if converted:  # slimkit.attention modules: their heads are not in a layout the graph analysis splits
        cls = type(model.get_submodule(converted[0])).__name__
        raise MethodError(f"{config.kind}: {converted[0]!r} is converted attention ({cls}); run prune.heads "
                          "before the attention.* conversion (the conversion keeps the pruned heads)")
    batch = example_batch(ctx, config.kind)
    graph = analyze(model, batch)
    groups = selected_groups(model, graph, targets, heads=True)
    if not groups:
        raise MethodError(f"{config.kind}: no attention-head group among the targets ({targets.to_dict()}); "
                          + unsplit_attention(model, targets))
    scores = score_groups(model, groups, config.importance, ctx, config.calib_batches, config.kind, config.grad_source)
    kept: dict[str, torch.Tensor] = {}
    for g in groups:
        s = scores[g.name]
        if config.heads_per_group is not None:
            if config.heads_per_group >= g.n_units:
                raise MethodError(f"{config.kind}: cannot remove {config.heads_per_group} of {g.n_units} heads "
                                  f"in {g.name!r}")
            k = g.n_units - config.heads_per_group
            kept[g.name] = torch.sort(torch.topk(s, k).indices).values
        else:
            kept.update(allocation.allocate({g.name: s}, config.ratio))
    return _run(model, graph, kept, batch, config.kind)


register_replay(ChannelPrune)(replay_plan)
register_replay(HeadPrune)(replay_plan)


def units(model: nn.Module, example_inputs: Any) -> dict[str, dict[str, Any]]:
    """What can be pruned: ``{group: {"units", "heads", "modules"}}`` (for explanations and tests)."""
    graph = analyze(model, example_inputs)
    return {g.name: {"units": g.n_units, "heads": g.heads, "modules": g.modules} for g in graph.groups}


__all__ = ["ChannelPrune", "HeadPrune", "group_scores", "head_gate_importance", "head_projections", "replay_plan",
           "score_groups", "units"]
