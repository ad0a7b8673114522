"""Recurrent layers (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) in structured and unstructured pruning.

Why hidden units are the structured unit: hidden unit ``j`` of layer ``k`` (direction ``d``)
owns row ``g*H + j`` of every gate block (4 gates for an LSTM, 3 for a GRU, 1 for a plain
RNN) in ``weight_ih_lk`` / ``weight_hh_lk`` and both biases, column ``j`` of ``weight_hh_lk``
(the recurrence reads it back), column ``d*H + j`` of ``weight_ih_l{k+1}`` (the next layer
reads both directions' halves) and, for the last layer, whatever consumes the output
sequence or the final state (a pooled Linear head, ``h_n[-1]``...). Removing the unit must
remove all of these together, or the gates of the remaining units would read a different
input.

How it joins the dependency graph (:mod:`.graph`): ``aten.lstm`` / ``aten.gru`` /
``aten.rnn_*`` nodes get a label handler (:func:`label_rnn`) that makes one atom per hidden
unit (the ids of ``weight_hh_lk``'s columns), couples every gate row, bias and next-layer
column to it, and labels the outputs: the sequence output's last dim carries the last
layer's units (forward then reverse), ``h_n`` / ``c_n`` (``[L*D, B, H]``) carry unit ``j`` of
layer/direction ``i`` at position ``[i, :, j]``. Indexing ``h_n`` by layer with a constant
(``h_n[-1]``) is safe (that dim never shrinks), which :func:`is_stacked_state` tells the
propagator. Everything downstream (mean/max pooling, concatenation, the head's columns)
is then the ordinary channel machinery.

One constraint is recurrent-specific: an ``nn.LSTM`` has one ``hidden_size`` for all its
layers and directions, so every (layer, direction) must keep the same number of units.
:func:`equalize_kept` turns whatever the allocator chose into that shape (per module: the
mean kept count, rounded; per (layer, direction): its best units by the group's scores).
``proj_size`` LSTMs are left unpruned (their units are frozen).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import nn

_OPS = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_REC_PARAM = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def is_recurrent(module: nn.Module) -> bool:
    """True for torch's recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``)."""
    return isinstance(module, nn.RNNBase)


def is_recurrent_weight(module: nn.Module, pname: str) -> bool:
    """``weight_ih_lK`` / ``weight_hh_lK`` (and ``_reverse``) of a recurrent layer: its weight matrices."""
    m = _REC_PARAM.match(pname)
    return is_recurrent(module) and m is not None and m.group(1).startswith("weight")


def is_recurrent_bias(module: nn.Module, pname: str) -> bool:
    m = _REC_PARAM.match(pname)
    return is_recurrent(module) and m is not None and m.group(1).startswith("bias")


def directions(module: nn.RNNBase) -> int:
    return 2 if module.bidirectional else 1


def param_names(layer: int, direction: int, has_bias: bool) -> list[str]:
    """``[weight_ih, weight_hh, (bias_ih, bias_hh)]`` names of one layer/direction."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    names = [f"weight_ih{sfx}", f"weight_hh{sfx}"]
    return names + ([f"bias_ih{sfx}", f"bias_hh{sfx}"] if has_bias else [])


def fix_rnn(m: nn.RNNBase) -> None:
    """Recompute ``hidden_size`` / ``input_size`` from the (sliced) weights and refresh the flat weight list."""
    m.hidden_size = int(m.weight_hh_l0.shape[1])
    m.input_size = int(m.weight_ih_l0.shape[1])
    m._init_flat_weights()


# -- dependency-graph labelling --------------------------------------------------------------

def rnn_op_gates(op: str) -> int | None:
    """Gates per unit for an ATen recurrent op name (``lstm`` -> 4), None for other ops."""
    return _OPS.get(op)


def label_rnn(prop: Any, node: Any, args: list[Any], gates: int) -> Any:
    """Labels of an ``aten.lstm/gru/rnn_*.input`` node's outputs; couples every unit's slices.

    Args (ATen order): input, hx (list for LSTM), params, has_biases, num_layers, dropout,
    train, bidirectional, batch_first. Returns ``[output, h_n(, c_n)]`` label arrays.
    """
    from .propagate import _shape

    inp, hx, params = args[0], args[1], list(args[2])
    has_bias, n_layers, bidir = bool(args[3]), int(args[4]), bool(args[7])
    per, D = (4 if has_bias else 2), (2 if bidir else 1)
    names = [prop.pname(p) for p in params]
    in_shape = _shape(inp)
    if any(n is None for n in names) or len(names) != per * n_layers * D or in_shape is None:
        prop.freeze_all(node, "recurrent layer with computed or projected weights")
        return None
    x = prop.lab(inp)
    units: dict[tuple[int, int], np.ndarray] = {}
    prev: list[np.ndarray] = []
    for k in range(n_layers):
        cur = []
        for d in range(D):
            w_ih, w_hh, *biases = names[(k * D + d) * per:(k * D + d + 1) * per]
            H = prop.state[w_hh].shape[1]
            u = prop.ax(w_hh, 1)  # [H]: one atom per hidden unit
            for rows in (prop.ax(w_ih, 0), prop.ax(w_hh, 0), *(prop.ax(b, 0) for b in biases)):
                prop.L.unify(rows.reshape(gates, H), u[None, :])  # every gate row of unit j
            if k == 0:
                prop.consume(x, prop.ax(w_ih, 1), len(in_shape) - 1, len(in_shape))
            else:
                prop.L.unify(prop.ax(w_ih, 1), np.concatenate(prev))  # both directions' halves
            units[k, d] = u
            cur.append(u)
        prev = cur
    states = hx if isinstance(hx, (list, tuple)) else [hx]
    if any(hasattr(h, "op") and (h.op == "placeholder" or prop.labels.get(h) is not None) for h in states):
        for u in units.values():  # an initial state from outside has the full hidden size
            prop.L.freeze(u, "recurrent layer with a given initial state")
    ndim = len(in_shape)
    out = prop.along(np.concatenate(prev), ndim, ndim - 1)  # [.., D*H] channel-last
    stacked = np.stack([units[k, d] for k in range(n_layers) for d in range(D)])  # [L*D, H]
    state = stacked[:, None, :] if ndim == 3 else stacked  # [L*D, 1, H] (batched) or [L*D, H]
    return [out, state, state] if gates == 4 else [out, state]


def is_stacked_state(prop: Any, value: Any, dim: int) -> bool:
    """True when ``value`` is an ``h_n`` / ``c_n`` and ``dim`` its layer*direction dim (never shrinks)."""
    return dim == 0 and value in getattr(prop, "rnn_states", ())


# -- keeping nn.LSTM's single hidden_size -------------------------------------------------------

def rnn_units(model: nn.Module, group_members: dict[tuple[str, int], np.ndarray]
              ) -> dict[str, dict[tuple[int, int], np.ndarray]]:
    """``{rnn module: {(layer, direction): unit index in the group per hidden position}}``."""
    out: dict[str, dict[tuple[int, int], np.ndarray]] = {}
    for (param, dim), members in group_members.items():
        mod_name, _, attr = param.rpartition(".")
        m = _REC_PARAM.match(attr)
        if dim != 1 or m is None or m.group(1) != "weight_hh":
            continue
        if not is_recurrent(model.get_submodule(mod_name)):
            continue
        out.setdefault(mod_name, {})[int(m.group(2)), 1 if m.group(3) else 0] = members
    return out


def equalize_kept(model: nn.Module, groups: list[Any], scores: dict[str, torch.Tensor],
                  kept: dict[str, torch.Tensor], round_to: int = 1, min_keep: int = 1) -> dict[str, torch.Tensor]:
    """Make every recurrent module keep the same number of units in each of its layers/directions.

    Per module the count is the mean of what the allocator kept per (layer, direction),
    rounded to ``round_to``; a module with any unit outside the selected groups (frozen or
    not targeted) keeps all units. Each (layer, direction) then keeps its top-scoring units.
    Non-recurrent units of the same groups keep the allocator's choice.
    """
    by_name = {g.name: g for g in groups}
    where: dict[str, list[tuple[str, tuple[int, int], np.ndarray]]] = {}  # module -> (group, (k, d), idx)
    for g in groups:
        for mod, per_kd in rnn_units(model, g.members).items():
            for kd, idx in per_kd.items():
                where.setdefault(mod, []).append((g.name, kd, idx))
    if not where:
        return kept
    out = {name: set(v.tolist()) for name, v in kept.items()}
    for mod, entries in where.items():
        rnn = model.get_submodule(mod)
        H = int(rnn.hidden_size)
        complete = len(entries) == rnn.num_layers * directions(rnn) and all((idx >= 0).all() for _, _, idx in entries)
        kept_counts = [sum(int(i) in out[g] for i in idx) for g, _, idx in entries]
        n = int(round(sum(kept_counts) / len(kept_counts))) if complete else H
        if n < H:
            n = min(H, max(min_keep, round_to * max(1, int(round(n / round_to)))))
        for g, _, idx in entries:
            s = scores[g][torch.as_tensor(idx)]  # [H] scores of this layer/direction's units
            best = set(torch.topk(s, n).indices.tolist())
            for j, i in enumerate(idx.tolist()):
                if i < 0:
                    continue
                (out[g].add if j in best else out[g].discard)(i)
    return {name: torch.as_tensor(sorted(v), dtype=torch.long) for name, v in out.items() if name in by_name}


def rnn_producer(module: nn.Module, attr: str, dim: int) -> bool:
    """A recurrent module *produces* the units on dim 0 of its hidden-to-hidden weights."""
    m = _REC_PARAM.match(attr)
    return is_recurrent(module) and m is not None and m.group(1) == "weight_hh" and dim == 0


__all__ = ["directions", "equalize_kept", "fix_rnn", "is_recurrent", "is_recurrent_bias", "is_recurrent_weight",
           "is_stacked_state", "label_rnn", "param_names", "rnn_op_gates", "rnn_producer", "rnn_units"]
