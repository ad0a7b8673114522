"""Redundant-neuron merging (``prune.merge``), Srinivas & Babu 2015, data-free.

Two hidden neurons ``i`` and ``j`` of ``Linear -> activation -> Linear`` with the same
incoming weights (and bias) produce the same activation for every input, so ``j`` can be
removed and its outgoing weights added to ``i``'s: the output is unchanged, for any
elementwise activation. For near-duplicates the expected output change of removing ``j``
into ``i`` is measured by the saliency

    s_ij = <a_j^2> * ||w_i - w_j||^2

(``w`` = incoming weights with the bias appended, ``<a_j^2>`` = mean square of ``j``'s
outgoing weights). Neurons are removed greedily by lowest saliency; after each merge the
surviving twin's outgoing weights, and so its own saliency, are updated.

Unlike magnitude pruning this needs no data and keeps the function exactly when neurons
are duplicated (common after distillation or in over-parameterised FFNs). Both Linears
are physically shrunk; an HF config's ``intermediate_size`` is left as it was, so save
merged models with ``slimkit.save`` (which replays the shapes), not ``save_pretrained``.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

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
from ..core.record import index_list
from .allocation import keep_count


def merge_plan(w_in: Tensor, b_in: Tensor | None, w_out: Tensor, n_remove: int) -> tuple[Tensor, Tensor]:
    """Greedy merge plan: ``(kept, w_out_new)`` after removing ``n_remove`` of the ``n`` neurons.

    ``w_in`` is ``[n, d_in]`` (rows = hidden neurons), ``b_in`` ``[n]`` or None, ``w_out``
    ``[d_out, n]``. ``kept`` holds the sorted surviving neuron indices and ``w_out_new``
    ``[d_out, n_keep]`` the outgoing weights with every removed neuron folded into its twin.
    """
    n = w_in.shape[0]
    if w_out.shape[1] != n or (b_in is not None and b_in.shape != (n,)):
        raise ValueError(f"shapes do not chain: w_in {tuple(w_in.shape)}, b_in "
                         f"{None if b_in is None else tuple(b_in.shape)}, w_out {tuple(w_out.shape)}")
    if not 0 <= n_remove < n:
        raise ValueError(f"expected 0 <= n_remove < {n}, got {n_remove}")
    w = w_in.detach().double()
    if b_in is not None:
        w = torch.cat([w, b_in.detach().double().unsqueeze(1)], dim=1)  # [n, d_in + 1]
    # ||w_i||^2 + ||w_j||^2 - 2 w_i.w_j in float64: one matrix product instead of an
    # [n, n, d] difference tensor (docs/pruning.md#figures-behind-design-choices-in-the-code),
    # and float64 keeps duplicated neurons at ~1e-12, far below any genuine distance
    sq = (w * w).sum(dim=1)  # [n]
    dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (w @ w.T)).clamp_min_(0.0)  # [n, n] squared distances
    dist.fill_diagonal_(float("inf"))
    a = w_out.detach().double().clone()  # [d_out, n]
    msq = a.pow(2).mean(dim=0)  # [n]  <a_j^2>
    alive = torch.ones(n, dtype=torch.bool)
    dmin, nearest = dist.min(dim=0)  # [n]: closest twin i of each candidate j
    for _ in range(n_remove):
        sal = torch.where(alive, msq * dmin, torch.full_like(dmin, float("inf")))  # [n]
        j = int(torch.argmin(sal))
        i = int(nearest[j])
        a[:, i] += a[:, j]
        msq[i] = a[:, i].pow(2).mean()
        alive[j] = False
        dist[j, :] = float("inf")
        dist[:, j] = float("inf")
        stale = alive & (nearest == j)  # candidates whose twin was just removed
        if bool(stale.any()):
            dmin[stale], nearest[stale] = dist[:, stale].min(dim=0)
    kept = torch.nonzero(alive).squeeze(1)
    return kept, a[:, kept].to(w_out.dtype)


@method_config
class MergePrune(MethodConfig):
    """Merge redundant hidden neurons of Linear -> activation -> Linear pairs (data-free)."""

    kind = "prune.merge"
    stage = "shrink"

    ratio: float = 0.25
    round_to: int = 1

    def validate(self) -> None:
        self._require(0.0 <= self.ratio < 1.0, "ratio", "a float in [0, 1)", self.ratio)
        self._require(self.round_to >= 1, "round_to", "an int >= 1", self.round_to)


_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Mish,
                nn.Hardswish, nn.Softplus, nn.Identity, nn.Dropout)
_HF_PAIRS = (("intermediate.dense", "output.dense"), ("fc1", "fc2"), ("c_fc", "c_proj"))


def _is_conv1d(m: nn.Module) -> bool:
    """HF GPT-2's ``Conv1D``: a Linear with a transposed ``[in, out]`` weight."""
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "nx")


def _dims(m: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` of a Linear or Conv1D, else None."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if _is_conv1d(m):
        return int(getattr(m, "nx")), int(getattr(m, "nf"))  # noqa: B009
    return None


def find_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(first, second)`` module names of mergeable pairs: consecutive Linears in an
    ``nn.Sequential`` separated only by elementwise modules, and the HF FFN pairs
    ``intermediate.dense``/``output.dense``, ``fc1``/``fc2``, ``c_fc``/``c_proj``."""
    pairs: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for p, (cname, child) in enumerate(children):
                if not isinstance(child, nn.Linear):
                    continue
                for qname, nxt in children[p + 1:]:
                    if isinstance(nxt, nn.Linear) and nxt.in_features == child.out_features:
                        pairs.append((prefix + cname, prefix + qname))
                    if not isinstance(nxt, _ELEMENTWISE):
                        break
        for first, second in _HF_PAIRS:
            try:
                a, b = module.get_submodule(first), module.get_submodule(second)
            except AttributeError:
                continue
            da, db = _dims(a), _dims(b)
            if da and db and da[1] == db[0]:
                pairs.append((prefix + first, prefix + second))
    return list(dict.fromkeys(pairs))  # an nn.Sequential with fc1/fc2 children matches twice


def _weights(first: nn.Module, second: nn.Module) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(w_in [n, d_in], b_in [n], w_out [d_out, n])`` whatever the modules' weight layout."""
    w1, w2 = cast(Tensor, first.weight), cast(Tensor, second.weight)
    w_in = w1.T if _is_conv1d(first) else w1
    w_out = w2.T if _is_conv1d(second) else w2
    return w_in, cast("Tensor | None", first.bias), w_out


def shrink_pair(first: nn.Module, second: nn.Module, kept: Tensor, w_out_new: Tensor | None = None) -> None:
    """Keep hidden neurons ``kept``: rows of ``first``'s output, columns of ``second``'s input.

    ``w_out_new`` (``[d_out, n_keep]``) replaces ``second``'s weight; without it the kept
    columns are simply gathered (replay: the saved weights are loaded afterwards).
    """
    kept = kept.to(cast(Tensor, first.weight).device)
    with torch.no_grad():
        w_in, b_in, w_out = _weights(first, second)
        new_in = w_in[kept].clone()  # [k, d_in]
        new_out = (w_out[:, kept] if w_out_new is None else w_out_new).clone().to(w_out.dtype)  # [d_out, k]
        first.weight = nn.Parameter(new_in.T.contiguous() if _is_conv1d(first) else new_in)
        if b_in is not None:
            first.bias = nn.Parameter(b_in[kept].clone())
        second.weight = nn.Parameter(new_out.T.contiguous() if _is_conv1d(second) else new_out)
    setattr(first, "nf" if _is_conv1d(first) else "out_features", len(kept))
    setattr(second, "nx" if _is_conv1d(second) else "in_features", len(kept))


@register_method(MergePrune)
def merge_neurons(model: nn.Module, config: MergePrune, targets: Targets, ctx: Context) -> Record:
    pairs = [(f, s) for f, s in find_pairs(model) if targets.matches(f, model.get_submodule(f))]
    if not pairs:
        raise MethodError(f"{config.kind}: found no Linear -> activation -> Linear pair among the targets "
                          f"({targets.to_dict()}); supported: nn.Sequential, intermediate/output.dense, fc1/fc2, c_fc/c_proj")
    params_before = sum(p.numel() for p in model.parameters())
    done: dict[str, dict[str, Any]] = {}
    for first_name, second_name in pairs:
        first, second = model.get_submodule(first_name), model.get_submodule(second_name)
        w_in, b_in, w_out = _weights(first, second)
        n = w_in.shape[0]
        n_keep = keep_count(n, config.ratio, round_to=config.round_to)
        kept, w_out_new = merge_plan(w_in, b_in, w_out, n - n_keep)
        shrink_pair(first, second, kept, w_out_new)
        done[first_name] = {"second": second_name, "kept": kept.tolist(), "n_before": n}
    params_after = sum(p.numel() for p in model.parameters())
    return Record(
        kind=config.kind,
        data={"pairs": done},
        summary={"pairs": len(done), "neurons_before": sum(v["n_before"] for v in done.values()),
                 "neurons_after": sum(len(v["kept"]) for v in done.values()),
                 "params_before": params_before, "params_after": params_after},
    )


@register_replay(MergePrune)
def replay_merge(model: nn.Module, record: Record) -> None:
    for first_name, info in record.data["pairs"].items():
        first, second = model.get_submodule(first_name), model.get_submodule(info["second"])
        n = _weights(first, second)[0].shape[0]
        if n != info["n_before"]:
            raise MethodError(f"prune.merge replay: {first_name!r} has {n} neurons, the record expects {info['n_before']}")
        kept = index_list(info["kept"], n, f"prune.merge replay: {first_name!r}")
        shrink_pair(first, second, torch.tensor(kept, dtype=torch.long))


__all__ = ["MergePrune", "find_pairs", "merge_plan", "shrink_pair"]
