"""Task metrics and fidelity to a reference model: pure functions on tensors / arrays.

Inputs may be torch tensors, numpy arrays or nested lists; results are Python floats.
Fidelity metrics (:func:`top1_agreement`, :func:`cosine_fidelity`) compare a compressed
model with its original on the same inputs, which shows damage even where the task
metric is too noisy on a small evaluation set to show it.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.errors import DataError


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.numel() == 0:
        raise DataError(f"{name} is empty")
    return t


def _predictions(logits_or_preds: Any, labels: torch.Tensor) -> torch.Tensor:
    x = _as_tensor(logits_or_preds, "logits_or_preds")
    if x.dim() == labels.dim() + 1:
        return x.argmax(dim=-1)  # [N, C] logits -> [N] class ids
    if x.shape != labels.shape:
        raise DataError(f"predictions of shape {tuple(x.shape)} do not match labels {tuple(labels.shape)}; "
                        "pass logits [N, C] or class ids [N]")
    return x


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Fraction of correct predictions; ``logits_or_preds`` is ``[N, C]`` logits or ``[N]`` class ids."""
    y = _as_tensor(labels, "labels")
    pred = _predictions(logits_or_preds, y)
    if pred.shape != y.shape:
        raise DataError(f"predictions of shape {tuple(pred.shape)} do not match labels {tuple(y.shape)}")
    return float((pred.long() == y.long()).float().mean().item())


def top1_agreement(logits_a: Any, logits_b: Any) -> float:
    """Fraction of rows where two models' arg-max classes agree (``[N, C]`` each)."""
    a, b = _as_tensor(logits_a, "logits_a"), _as_tensor(logits_b, "logits_b")
    if a.shape != b.shape or a.dim() < 2:
        raise DataError(f"top1_agreement needs two [N, C] logit tensors of one shape, got {tuple(a.shape)} "
                        f"and {tuple(b.shape)}")
    return float((a.argmax(dim=-1) == b.argmax(dim=-1)).float().mean().item())


def cosine_fidelity(emb_a: Any, emb_b: Any, eps: float = 1e-12) -> float:
    """Mean cosine similarity of matching rows of two ``[N, D]`` embedding matrices."""
    a = _as_tensor(emb_a, "emb_a").double()
    b = _as_tensor(emb_b, "emb_b").double()
    if a.shape != b.shape:
        raise DataError(f"cosine_fidelity needs embeddings of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])  # [N, D]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=eps)  # [N]
    return float(cos.mean().item())


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties given the average of the ranks they span (scipy's 'average')."""
    x = x.reshape(-1)
    n = x.numel()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = sorted_x[1:] != sorted_x[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1  # [n] tie-group id in sorted order
    n_groups = int(group[-1].item()) + 1
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, positions)
    counts = torch.bincount(group, minlength=n_groups).to(torch.float64)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks).

    NaN when either side is constant or contains NaN (as ``scipy.stats.spearmanr``).
    """
    a, b = _as_tensor(x, "x").reshape(-1), _as_tensor(y, "y").reshape(-1)
    if a.numel() != b.numel():
        raise DataError(f"spearman needs equally long inputs, got {a.numel()} and {b.numel()}")
    if a.numel() < 2:
        raise DataError("spearman needs at least 2 pairs")
    a, b = a.double(), b.double()
    if torch.isnan(a).any() or torch.isnan(b).any():
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    if denom == 0.0:
        return float("nan")
    return float(((ra * rb).sum().item()) / denom)
