"""What the importance criteria read, gathered from the model: gradients, head-gate
gradients, producer activations, and the :class:`~slimkit.prune.importance.GroupInputs` of a group.

The criteria themselves are pure functions in :mod:`slimkit.prune.importance`
(``CRITERIA``); this module holds the module plumbing (backward passes, forward hooks) they
must not contain. ``prune.channel`` and ``prune.heads`` gather only what the chosen
criterion ``needs``.

Data rules: gradients come from ``ctx.loss_fn`` over ``ctx.train_data`` or, with no loss
or ``grad_source="output"``, from the proxy ``sum(output**2)`` over ``ctx.calib_data``
(:func:`backward_passes`); activations from plain forwards over ``ctx.calib_data`` (or the
example inputs), at most ``batches`` of them.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodError
from ..core.context import call_model, first_tensor, forward_batches
from ..core.modules import owner_of
from . import importance, recurrent
from .graph import Group

GradSource = Literal["loss", "output"]


def _loss_tensor(out: Any) -> torch.Tensor:
    t = first_tensor(out)
    if t is None:
        raise MethodError("the model output holds no tensor to build a default loss from")
    return t


def backward_passes(model: nn.Module, ctx: Context, batches: int, method: str,
                    source: GradSource = "loss") -> Iterator[None]:
    """Run ``loss.backward()`` on up to ``batches`` batches; yields while ``p.grad`` holds one batch's gradient.

    With ``ctx.loss_fn`` (and ``source="loss"``) the batches come from ``ctx.train_data``
    (the loss needs targets; calibration batches are inputs only). Otherwise the proxy
    ``sum(output**2)`` runs on ``ctx.calib_data`` (or the example inputs). The model runs
    in eval mode; its mode is restored and its gradients cleared afterwards.
    """
    if source == "loss" and ctx.loss_fn is not None and ctx.train_data is not None:
        data: Any = ctx.train_data
        loss_of = ctx.loss_fn
    else:
        data = ctx.calib_data if ctx.calib_data is not None else (
            [ctx.example_inputs] if ctx.example_inputs is not None else None)
        def loss_of(m, b):
            return _loss_tensor(call_model(m, b)).float().pow(2).sum()
    if data is None:
        raise MethodError(f"{method} with gradient importance needs Context.train_data + loss_fn "
                          "or Context.calib_data")
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(data):
            if i >= batches:
                break
            model.zero_grad(set_to_none=True)
            loss_of(model, batch).backward()
            yield
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def gradients(model: nn.Module, ctx: Context, batches: int, method: str,
              source: GradSource = "loss") -> dict[str, torch.Tensor]:
    """Gradients of the loss (or the sum-of-squares output proxy) per parameter, summed over batches."""
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    for _ in backward_passes(model, ctx, batches, method, source):
        for n, p in params.items():
            if p.grad is not None:
                grads[n] += p.grad.detach()
    return grads


def head_projections(model: nn.Module, group: Group) -> list[tuple[str, int]]:
    """``(param, dim)`` of every output projection's input axis that reads ``group``'s heads.

    These are the group's weights of >= 2 dims whose module does not *produce* the group's
    units (dim 1 of an ``nn.Linear`` o-proj, dim 0 of GPT-2's ``Conv1D`` c_proj). Usually
    one; several when heads are tied across layers (T5's shared relative position bias).
    """
    made_by = set(producers(model, group))
    found = [(param, dim) for param, dim in group.members
             if param.rpartition(".")[2] == "weight" and param.rpartition(".")[0] not in made_by
             and model.get_parameter(param).dim() >= 2]
    if not found:
        raise MethodError(f"head importance found no output projection reading the heads of {group.name!r}")
    return found


def head_gates(model: nn.Module, groups: list[Group], ctx: Context, batches: int, method: str,
               source: GradSource = "loss") -> dict[str, torch.Tensor]:
    """Signed gate gradient of every head of ``groups`` per batch, ``{group: [K, n_heads]}``.

    Per batch, each head's gate gradient is summed over the projections reading it
    (:func:`importance.head_gate_contributions`); the ``head`` criterion then averages
    its absolute value over batches.
    """
    axes = {g.name: head_projections(model, g) for g in groups}
    signed: dict[str, list[torch.Tensor]] = {g.name: [] for g in groups}  # per batch, [H] each
    for _ in backward_passes(model, ctx, batches, method, source):
        for g in groups:
            total = torch.zeros(g.n_units)
            for param, dim in axes[g.name]:
                p = model.get_parameter(param)
                if p.grad is not None:
                    head_of = torch.as_tensor(g.members[(param, dim)])
                    total += importance.head_gate_contributions(p, p.grad, dim, head_of, g.n_units)[0]
            signed[g.name].append(total)
    if not all(signed.values()):
        raise MethodError(f"{method}: the gradient data holds no batch")
    return {name: torch.stack(rows) for name, rows in signed.items()}


def head_gate_importance(model: nn.Module, groups: list[Group], ctx: Context, batches: int,
                         method: str, source: GradSource = "loss") -> dict[str, torch.Tensor]:
    """Michel et al. 2019 importance of every head of ``groups``: per-batch |gate gradient|, averaged."""
    gates = head_gates(model, groups, ctx, batches, method, source)
    return {name: importance.score_group("head", importance.GroupInputs(name=name, n_units=g.shape[1], gates=g))
            for name, g in gates.items()}


def _channels(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """A producer's output as ``[samples, channels]``: conv maps are global-average-pooled
    (Luo & Wu's recipe), every other layout keeps its channels last."""
    out = out.detach().float()
    if isinstance(module, nn.modules.conv._ConvNd):
        return out.mean(dim=tuple(range(2, out.dim()))) if out.dim() > 2 else out  # [B, C]
    return out.reshape(-1, out.shape[-1])  # [B * T, C]


def producer_activations(model: nn.Module, groups: list[Group], ctx: Context, batches: int, method: str
                         ) -> dict[str, tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
    """``{group: ((activations [samples, channels], unit of each channel), ...)}`` per producer.

    Forward hooks record every producer's output over up to ``batches`` batches of
    ``ctx.calib_data`` (or the example inputs). Recurrent producers are skipped (their
    per-layer hidden states are not module outputs).
    """
    data = ctx.calib_data if ctx.calib_data is not None else (
        [ctx.example_inputs] if ctx.example_inputs is not None else None)
    if data is None:
        raise MethodError(f"{method} with activation importance needs Context.calib_data or example_inputs")
    wanted: dict[str, list[tuple[str, torch.Tensor]]] = {}  # module -> [(group, unit of each channel)]
    for g in groups:
        for param, dim in g.members:
            module, attr = owner_of(model, param)
            mod_name = param.rpartition(".")[0]
            if (attr == "weight" and module.weight.dim() >= 2 and not recurrent.is_recurrent(module)
                    and dim == _out_dim(module)):
                wanted.setdefault(mod_name, []).append((g.name, torch.as_tensor(g.members[(param, dim)])))
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, out: Any) -> None:
            t = first_tensor(out)
            if t is not None and t.is_floating_point():
                seen[name].append(_channels(module, t))
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in wanted]
    forward_batches(model, itertools.islice(data, batches), handles)
    out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {g.name: [] for g in groups}
    for name, uses in wanted.items():
        if not seen[name]:
            continue
        acts = torch.cat(seen[name])  # [samples, channels]
        for group, units in uses:
            if acts.shape[1] == units.numel():
                out[group].append((acts, units))
    return {k: tuple(v) for k, v in out.items()}


def _out_dim(module: nn.Module) -> int:
    """The weight dim that indexes a layer's output channels: 1 for HF Conv1D and Embedding, else 0."""
    return 1 if type(module).__name__ == "Conv1D" or isinstance(module, nn.Embedding) else 0


def group_inputs(model: nn.Module, group: Group, *, seed: int = 0, grads: dict[str, torch.Tensor] | None = None,
                 acts: tuple[tuple[torch.Tensor, torch.Tensor], ...] = (), gates: torch.Tensor | None = None
                 ) -> importance.GroupInputs:
    """The :class:`~slimkit.prune.importance.GroupInputs` of ``group``: every coupled tensor with
    its role (producer / normalisation / consumer), plus the gathered gradients, activations, gates."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    made_by = set(producers(model, group))
    members = []
    for (param, dim), units in group.members.items():
        module, attr = owner_of(model, param)
        members.append(importance.Member(
            tensor=state[param].detach(), dim=dim, units=torch.as_tensor(units, dtype=torch.long), attr=attr,
            producer=param.rpartition(".")[0] in made_by,
            norm=isinstance(module, nn.modules.batchnorm._NormBase),
            grad=None if grads is None else grads.get(param)))
    return importance.GroupInputs(name=group.name, n_units=group.n_units, members=tuple(members), seed=seed,
                                  acts=acts, gates=gates)


def producers(model: nn.Module, group: Group) -> list[str]:
    """Modules whose outputs are the group's units: Linear / Conv out dim, HF Conv1D dim 1, Embedding width."""
    out = []
    for param, dim in group.members:
        m, attr = owner_of(model, param)
        mod_name = param.rpartition(".")[0]
        if recurrent.rnn_producer(m, attr, dim):  # LSTM/GRU hidden units
            if mod_name not in out:
                out.append(mod_name)
            continue
        if attr != "weight" or m.weight.dim() < 2:
            continue
        if dim == _out_dim(m) and mod_name not in out:
            out.append(mod_name)
    return out


__all__ = ["GradSource", "backward_passes", "gradients", "group_inputs", "head_gate_importance", "head_gates",
           "head_projections", "producer_activations", "producers"]
