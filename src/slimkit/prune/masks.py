"""Pure functions that turn importance scores into keep-masks (no modules involved)."""
from __future__ import annotations

import torch


def _n_prune(numel: int, sparsity: float) -> int:
    return min(numel, int(round(sparsity * numel)))


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the ``(1 - sparsity)`` fraction of largest scores.

    Exactly ``round(sparsity * numel)`` entries are dropped; ties are broken by position,
    so the reached sparsity never depends on duplicate values.
    """
    flat = scores.reshape(-1)
    n_drop = _n_prune(flat.numel(), sparsity)
    mask = torch.ones_like(flat, dtype=torch.bool)
    if n_drop:
        drop = torch.topk(flat, n_drop, largest=False, sorted=False).indices
        mask[drop] = False
    return mask.reshape(scores.shape)


def global_topk_masks(scores: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One threshold across all tensors ("class-blind"): drop the globally smallest scores."""
    if not scores:
        return []
    flat = torch.cat([s.reshape(-1).float() for s in scores])  # [sum numel]
    keep = topk_mask(flat, sparsity)
    out, start = [], 0
    for s in scores:
        out.append(keep[start:start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


def sparsity_of(t: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return 1.0 - (torch.count_nonzero(t).item() / max(1, t.numel()))
