"""Physical surgery: slice parameters to the kept positions and fix the attributes forward reads.

A plan is ``{param_qualified_name: {dim: kept_positions}}`` (from
:meth:`slimkit.prune.graph.DependencyGraph.plan`). Slicing replaces each tensor by a
smaller dense copy (never a mask), then every touched module's size attributes are
recomputed from its new tensors, and attention modules get their head counts recomputed
from their projections, so the model's own ``forward`` runs unchanged on the smaller shapes.
Everything here needs only the plan, which is why ``restore`` can replay it without data.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import MethodError
from ..core.modules import owner_of

Plan = dict[str, dict[int, list[int]]]

_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "dim_per_head")
_NUM_HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_Q_NAMES = ("q_proj", "query", "q_lin", "q")
_K_NAMES = ("k_proj", "key", "k_lin", "k")
_FUSED_QKV = ("c_attn", "qkv", "Wqkv", "qkv_proj")


def slice_params(model: nn.Module, plan: Plan) -> set[str]:
    """Replace every planned tensor by its kept slices; returns the touched module names."""
    touched: set[str] = set()
    with torch.no_grad():
        for fqn, dims in plan.items():
            module, attr = owner_of(model, fqn)
            t = getattr(module, attr)
            new = t.detach()
            for dim, kept in sorted(dims.items()):
                new = new.index_select(int(dim), torch.as_tensor(kept, dtype=torch.long, device=t.device))
            new = new.clone().contiguous()
            if isinstance(t, nn.Parameter):
                setattr(module, attr, nn.Parameter(new, requires_grad=t.requires_grad))
            else:
                module._buffers[attr] = new
            touched.add(fqn.rpartition(".")[0])
    for name in touched:
        fix_module(model.get_submodule(name))
    fix_attention(model)
    return touched


def fix_module(m: nn.Module) -> None:
    """Recompute a standard module's size attributes from its (sliced) tensors."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = w.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        if m.groups == 1:
            m.out_channels, m.in_channels = w.shape[0], w.shape[1]
        else:  # depthwise (the only grouped case the analysis prunes): in == out == groups
            m.out_channels = m.in_channels = m.groups = w.shape[0]
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = w if w is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.LayerNorm) and w is not None:
        m.normalized_shape = tuple(w.shape)
    elif isinstance(m, nn.GroupNorm) and w is not None:
        m.num_channels = w.shape[0]
    elif isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = w.shape
    elif isinstance(m, nn.RNNBase):  # LSTM/GRU: hidden_size from weight_hh, flat weight list
        from .recurrent import fix_rnn

        fix_rnn(m)
    elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # HF GPT-2: weight [in, out]
        m.nf = w.shape[1]
        if hasattr(m, "nx"):
            m.nx = w.shape[0]


def _out_features(m: nn.Module) -> int:
    w = m.weight
    return w.shape[1] if type(m).__name__ == "Conv1D" else w.shape[0]


def fix_attention(model: nn.Module) -> None:
    """Recompute head counts on attention modules (and per-layer sizes derived from them).

    An attention module is one with an int head-dim attribute and a head-count attribute;
    the new counts come from its query and key projections (or a fused qkv projection),
    divided by the head dim, which head pruning never changes.
    """
    for m in model.modules():
        head_dim = next((getattr(m, a) for a in _HEAD_DIM_ATTRS if isinstance(getattr(m, a, None), int)), None)
        count_attr = [a for a in _NUM_HEADS_ATTRS if isinstance(getattr(m, a, None), int)]
        if not head_dim or not count_attr:
            continue
        children = dict(m.named_children())
        q = next((children[n] for n in _Q_NAMES if n in children and hasattr(children[n], "weight")), None)
        k = next((children[n] for n in _K_NAMES if n in children and hasattr(children[n], "weight")), None)
        fused = next((children[n] for n in _FUSED_QKV if n in children and hasattr(children[n], "weight")), None)
        if q is not None:
            nq = _out_features(q) // head_dim
            nkv = _out_features(k) // head_dim if k is not None else nq
        elif fused is not None:
            nq = nkv = _out_features(fused) // (3 * head_dim)
        else:
            continue
        for a in count_attr:
            setattr(m, a, nq)
        if isinstance(getattr(m, "num_key_value_heads", None), int):
            m.num_key_value_heads = nkv
        if isinstance(getattr(m, "num_key_value_groups", None), int) and nkv:
            m.num_key_value_groups = nq // nkv
        for a in ("all_head_size", "inner_dim"):
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, nq * head_dim)
        if isinstance(getattr(m, "split_size", None), int) and fused is not None:
            m.split_size = nq * head_dim
        if hasattr(m, "pruned_heads") and isinstance(m.pruned_heads, set):
            m.pruned_heads = set()


def check_plan(model: nn.Module, plan: Plan) -> None:
    """Fail early (with the name) when a plan does not fit the model it is replayed on."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for fqn, dims in plan.items():
        if fqn not in state:
            raise MethodError(f"pruning record names {fqn!r}, which this model does not have")
        t = state[fqn]
        for dim, kept in dims.items():
            d = int(dim)
            if d >= t.dim() or (kept and max(kept) >= t.shape[d]):
                raise MethodError(f"pruning record for {fqn!r} dim {d} does not fit shape {tuple(t.shape)}")


__all__ = ["Plan", "check_plan", "fix_attention", "fix_module", "slice_params"]
