"""Pure tensor math of token pruning (``attention.token_prune``): scores, keep counts, selection.

No modules here: :mod:`.token_prune` owns the encoder surgery and calls these.

Conventions: ``B`` rows, ``S`` current slots (the sequence after earlier pruning steps),
``S0`` original positions, ``H`` hidden size, ``h`` heads, ``d`` head size. ``alive [B, S]``
marks the slots that hold a real, kept token; the other slots are padding (the original
padding, or filler slots of a row that keeps fewer tokens than the widest row of the batch)
and are masked as keys.
"""
from __future__ import annotations

from typing import Any

import torch

from ..core.errors import MethodError


def valid_from_mask(mask: Any, batch: int, seq: int, device: torch.device) -> torch.Tensor:
    """Which key positions are real tokens, ``[B, S]`` bool, from whatever mask the HF model prepared.

    The encoder receives the mask already in its attention implementation's format: ``None``
    (sdpa without padding), ``[B, S]`` (flash), ``[B, 1, Q, S]`` bool (sdpa) or additive float
    (eager, 0 where allowed and a large negative where masked). Row 0 of a 4-D mask is
    [CLS]'s query row, which in a bidirectional encoder allows exactly the real tokens.
    """
    if mask is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor):
        raise MethodError(f"attention.token_prune: the attention mask is a {type(mask).__name__} (e.g. flex "
                          "attention's BlockMask); token pruning supports the eager, sdpa and flash formats")
    if mask.dim() == 2:
        row = mask
    elif mask.dim() == 4:
        row = mask[:, 0, 0, :]  # [B|1, S]
    else:
        raise MethodError(f"attention.token_prune: unsupported attention mask of shape {tuple(mask.shape)}")
    if row.dtype == torch.bool:
        ok = row
    elif row.is_floating_point() and mask.dim() == 4:
        ok = row > torch.finfo(row.dtype).min / 2  # additive mask: 0 allowed, ~min masked
    else:
        ok = row != 0
    return ok.expand(batch, seq).to(device)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, S, h*d] -> [B, h, S, d]``."""
    b, s, hd = x.shape
    return x.view(b, s, heads, hd // heads).transpose(1, 2)


def cls_scores(q: torch.Tensor, k: torch.Tensor, alive: torch.Tensor, heads: int) -> torch.Tensor:
    """How much slot 0 ([CLS]) attends to each slot, averaged over heads: ``[B, S]``.

    Only [CLS]'s query row is computed (``O(S*d)`` per head), not the ``S x S`` matrix the
    layer's own attention kernel already used and did not return.
    """
    qh, kh = split_heads(q[:, :1], heads), split_heads(k, heads)  # [B, h, 1, d], [B, h, S, d]
    logits = (qh @ kh.transpose(-1, -2)).squeeze(2) * qh.shape[-1] ** -0.5  # [B, h, S]
    logits = logits.float().masked_fill(~alive[:, None, :], float("-inf"))
    return logits.softmax(-1).mean(1)  # [B, S]


def mean_scores(q: torch.Tensor, k: torch.Tensor, alive: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention each slot receives, averaged over the real query rows and heads (PoWER-BERT's
    significance score): ``[B, S]``. Costs one extra ``S x S`` score matrix per pruning step."""
    qh, kh = split_heads(q, heads), split_heads(k, heads)  # [B, h, S, d]
    logits = (qh @ kh.transpose(-1, -2)).float() * qh.shape[-1] ** -0.5  # [B, h, S, S]
    probs = logits.masked_fill(~alive[:, None, None, :], float("-inf")).softmax(-1)
    w = alive.float()[:, None, :, None]  # [B, 1, S, 1]: real query rows only
    return ((probs * w).sum(2) / w.sum(2).clamp(min=1.0)).mean(1)  # [B, S]


def key_norm_scores(q: torch.Tensor, k: torch.Tensor, alive: torch.Tensor, heads: int) -> torch.Tensor:
    """Norm of each slot's key vector (all heads): ``[B, S]``; no attention product at all.

    A key with a large norm draws large logits from most queries: a cheap stand-in for the attention
    a token receives. On MiniLM / STS-B, read at block 0 (keys of the embeddings) it keeps more of the
    mean-pooled content than [CLS] attention or the mean attention received (docs/attention.md)."""
    return k.float().norm(dim=-1).masked_fill(~alive, 0.0)


def keep_counts(lengths: torch.Tensor, fraction: float, min_keep: int = 0) -> torch.Tensor:
    """Tokens each row keeps: ``ceil(fraction * real length)``, at least ``min_keep`` and at least
    its first and last token (2), never more than its length. ``lengths [B]`` -> ``[B]``.

    ``min_keep`` protects short inputs: a row of at most ``min_keep`` real tokens is not pruned."""
    want = torch.ceil(lengths.double() * fraction - 1e-9).long().clamp(min=max(int(min_keep), 2))
    return torch.minimum(want, lengths)


def protected(pos: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Slots that are never dropped: the first token ([CLS]) and each row's last real token
    ([SEP]); ``pos [B, S]`` original positions -> ``[B, S]`` bool."""
    return (pos == 0) | (pos == (lengths - 1).clamp(min=0)[:, None])


def select(scores: torch.Tensor, counts: torch.Tensor, alive: torch.Tensor, keep_always: torch.Tensor,
           pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots to keep: ``(index [B, K], alive [B, K])`` with ``K = max(counts)``.

    Row ``b`` keeps its ``counts[b]`` best-scoring live slots (``keep_always`` first); the rest
    of its ``K`` slots are fillers (any other slot, marked not alive, masked downstream). Kept
    slots are ordered by original position, fillers after them, so [CLS] stays in slot 0.
    """
    s = scores.float().masked_fill(~alive, float("-inf")).masked_fill(keep_always, float("inf"))  # [B, S]
    k = max(int(counts.max()), 1)
    top = s.topk(k, dim=1).indices  # [B, K], best first
    ok = torch.arange(k, device=s.device)[None, :] < counts[:, None]  # [B, K]
    big = pos.shape[1] + 1 + int(pos.max())
    key = torch.where(ok, pos.gather(1, top), big + torch.arange(k, device=s.device)[None, :])
    order = key.argsort(dim=1)
    return top.gather(1, order), ok.gather(1, order)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, S, H]`` at slots ``index [B, K]`` -> ``[B, K, H]``."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def write_back(full: torch.Tensor, pos: torch.Tensor, x: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Put the live slots of ``x [B, S, H]`` back at their original positions ``pos [B, S]`` of
    ``full [B, S0, H]`` (fillers leave their position's earlier value); returns the new ``full``."""
    idx = pos[..., None].expand(-1, -1, full.shape[-1])  # [B, S, H]
    vals = torch.where(alive[..., None], x, full.gather(1, idx))
    return full.scatter(1, idx, vals)


def merge_targets(keys: torch.Tensor, index: torch.Tensor, kept: torch.Tensor, alive: torch.Tensor,
                  keep_always: torch.Tensor) -> torch.Tensor:
    """Where each current slot goes when the batch shrinks to the ``K`` slots ``index [B, K]``:
    ``[B, S]`` new slot numbers (ToMe-style merging, Bolya et al. 2023).

    A kept slot (``kept [B, K]`` marks the real ones among ``index``) goes to its own new slot; a
    live dropped slot goes to the kept slot whose key (``keys [B, S, D]``) is most similar by
    cosine, never [CLS] or the last [SEP] (``keep_always [B, S]``) unless the row kept nothing
    else (then [CLS], new slot 0). Dead slots (padding, fillers) get 0; callers weigh them 0.
    """
    b, s = alive.shape
    kn = torch.nn.functional.normalize(keys.float(), dim=-1)  # [B, S, D]
    sim = kn @ gather_rows(kn, index).transpose(1, 2)  # [B, S, K]
    host_ok = kept & ~keep_always.gather(1, index)  # [B, K]
    host = sim.masked_fill(~host_ok[:, None, :], float("-inf")).argmax(-1)  # [B, S]; all -inf -> 0 ([CLS])
    own = torch.zeros(b, s, dtype=torch.long, device=index.device)
    own = own.scatter(1, index, torch.arange(index.shape[1], device=index.device).expand_as(index))
    is_kept = torch.zeros(b, s, dtype=torch.bool, device=index.device).scatter(1, index, kept)
    return torch.where(is_kept, own, torch.where(alive, host, torch.zeros_like(host)))


def merge_rows(x: torch.Tensor, size: torch.Tensor, target: torch.Tensor, alive: torch.Tensor,
               index: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of ``x [B, S, H]`` into the ``K`` new slots ``target [B, S]`` says:
    ``(x [B, K, H], size [B, K])``; ``size [B, S]`` counts the original tokens each slot stands for.

    Fillers (``~kept``) carry the value ``index`` points at and size 0, so they stay finite (they
    are masked as keys, but a masked NaN would still poison the softmax's weighted sum)."""
    k = index.shape[1]
    w = size * alive  # [B, S]; dead slots weigh nothing
    tot = torch.zeros(x.shape[0], k, dtype=w.dtype, device=x.device).scatter_add(1, target, w)  # [B, K]
    acc = torch.zeros(x.shape[0], k, x.shape[2], dtype=x.dtype, device=x.device)
    acc = acc.scatter_add(1, target[..., None].expand_as(x), x * w[..., None].to(x.dtype))  # [B, K, H]
    merged = acc / tot.clamp(min=1e-6)[..., None].to(x.dtype)
    return torch.where(kept[..., None], merged, gather_rows(x, index)), torch.where(kept, tot, torch.zeros_like(tot))


def schedule(n_blocks: int, keep: tuple[float, ...], start: int | None, ratio: float | None) -> list[float]:
    """Fraction of each row's real tokens that block ``i`` processes, one per block.

    ``keep`` gives them directly; ``start``/``ratio`` means full length up to block ``start``,
    then each block keeps ``ratio`` of the previous block's share (``ratio ** (i - start + 1)``).
    """
    if keep:
        if len(keep) != n_blocks:
            raise MethodError(f"attention.token_prune: keep has {len(keep)} entries but the encoder has "
                              f"{n_blocks} blocks (one fraction per block)")
        return [float(f) for f in keep]
    assert start is not None and ratio is not None  # validate() guarantees one of the two forms
    if not 1 <= start < n_blocks:
        raise MethodError(f"attention.token_prune: start={start} must be in [1, {n_blocks - 1}] for "
                          f"{n_blocks} blocks (block 0 has no attention scores to prune by yet)")
    return [1.0 if i < start else ratio ** (i - start + 1) for i in range(n_blocks)]


def kept_share(fractions: list[float]) -> float:
    """Mean share of tokens the blocks process (the ideal cost ratio of the linear layers)."""
    return sum(fractions) / len(fractions) if fractions else 1.0


__all__ = ["cls_scores", "gather_rows", "keep_counts", "kept_share", "key_norm_scores", "mean_scores", "merge_rows", "merge_targets", "protected", "schedule",
           "select", "split_heads", "valid_from_mask", "write_back"]
