"""Sparsity-inducing regularisers: loss terms and a proximal step.

Loss terms (add to the training loss; :class:`slimkit.prune.hooks.SparsityHook.loss`
does it for the hooked weights):

- L1 ``sum |w|``: drives individual weights to zero (unstructured).
- Group lasso ``sum_g ||w_g||_2`` over rows (output units / conv filters) or columns
  (input features / input channels): zeroes whole groups, which structured pruning can
  then remove (Wen et al. 2016).
- Row L-infinity ``sum_rows max |w|``: penalises each row's largest weight.

A penalty's gradient never lands weights exactly on zero; the proximal step does.
:class:`ReweightedL1Prox` applies the soft-threshold of reweighted L1 (Candes et al.
2008) after ``optimizer.step()``: RPP-style proximal pruning, where weights already small
get a larger threshold so they reach exact zero and stay there.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

import torch

Groups = Literal["rows", "cols", "filters"]


def l1_penalty(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum |w|`` over all the tensors."""
    return sum((w.abs().sum() for w in weights), torch.zeros(()))


def group_norms(weight: torch.Tensor, groups: Groups = "rows") -> torch.Tensor:
    """L2 norm of each group: rows/filters are dim-0 slices, cols are dim-1 slices (input channels)."""
    if groups in ("rows", "filters"):
        return weight.reshape(weight.shape[0], -1).norm(dim=1)  # [out]
    if groups == "cols":
        return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)  # [in]
    raise ValueError(f"groups must be 'rows', 'cols' or 'filters', got {groups!r}")


def group_lasso(weights: Iterable[torch.Tensor], groups: Groups = "rows") -> torch.Tensor:
    """``sum_g ||w_g||_2`` (group lasso) over the chosen groups of every tensor."""
    return sum((group_norms(w, groups).sum() for w in weights), torch.zeros(()))


def row_linf(weights: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum_rows max_j |w_rj|`` (row L-infinity)."""
    return sum((w.reshape(w.shape[0], -1).abs().amax(dim=1).sum() for w in weights), torch.zeros(()))


def soft_threshold(w: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Proximal operator of ``tau * |w|``: ``sign(w) max(|w| - tau, 0)`` (exact zeros below tau)."""
    return torch.sign(w) * torch.clamp(w.abs() - tau, min=0.0)


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """A penalty term ``strength * R(weights)``; ``kind`` one of l1, group_lasso, row_l2, row_linf."""

    kind: Literal["l1", "group_lasso", "row_l2", "row_linf"] = "l1"
    strength: float = 1e-4
    groups: Groups = "rows"

    def __call__(self, weights: list[torch.Tensor]) -> torch.Tensor:
        if self.kind == "l1":
            value = l1_penalty(weights)
        elif self.kind == "group_lasso":
            value = group_lasso(weights, self.groups)
        elif self.kind == "row_l2":
            value = group_lasso(weights, "rows")
        elif self.kind == "row_linf":
            value = row_linf(weights)
        else:
            raise ValueError(f"unknown regulariser kind {self.kind!r}")
        return self.strength * value


@dataclasses.dataclass
class ReweightedL1Prox:
    """Reweighted-L1 proximal step, applied after ``optimizer.step()``.

    Each weight gets the threshold ``lr * strength * r_i`` with ``r_i = 1 / (|w_i| + eps)``,
    refreshed every ``reweight_every`` steps (the reweighting of Candes et al.): small
    weights are pushed to exact zero fast, large ones barely shrink, which approximates
    an L0 penalty better than plain L1.
    """

    strength: float
    lr: float
    eps: float = 1e-3
    reweight_every: int = 100
    _weights: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)

    def step(self, weights: list[torch.Tensor], t: int) -> None:
        with torch.no_grad():
            for w in weights:
                if t % self.reweight_every == 0 or id(w) not in self._weights:
                    self._weights[id(w)] = 1.0 / (w.abs() + self.eps)
                w.copy_(soft_threshold(w, self.lr * self.strength * self._weights[id(w)]))


__all__ = [
    "Regularizer",
    "ReweightedL1Prox",
    "group_lasso",
    "group_norms",
    "l1_penalty",
    "row_linf",
    "soft_threshold",
]
