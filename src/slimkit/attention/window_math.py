"""Sliding-window attention with global tokens, computed blockwise in O(n*w).

The pattern (Longformer / BigBird): query ``i`` sees key ``j`` when ``|i - j| <= w``
(``w`` = ``window``, the reach on ONE side, so the full band is ``2w + 1`` wide), or when
``j`` is a global token, or when ``i`` is a global token (global rows see everything).
Padding keys (``key_valid`` False) are never seen.

Why blockwise: a dense ``n x n`` score matrix with a band mask costs O(n^2) whatever the
mask says. Here the sequence is cut into blocks of ``w`` queries; a query block can only
reach keys in its own block and the two neighbouring ones, so each block scores against a
``3w``-key slab (the three blocks concatenated) and a small fixed ``[w, 3w]`` band mask
trims the slab to exactly ``|i - j| <= w``. Scores cost ``n * 3w`` per head instead of
``n^2``; the ``g`` global tokens add ``n * g`` (every query to them) plus ``g * n`` (their
own dense rows). A global key inside a local slab is masked there so it is counted once.

The slab is built by concatenating three shifted views of the padded key blocks rather
than ``unfold``, so the graph is plain reshape / cat / matmul that ``torch.export`` and
ONNX take.

:func:`dense_window_attention` is the O(n^2) masked reference the tests compare against.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F


def band_mask(window: int, device: torch.device | None = None) -> torch.Tensor:
    """[w, 3w] bool: query offset ``o`` in a block may see slab key ``k`` iff ``|k - w - o| <= w``.

    Slab key ``k`` sits at position ``(b - 1) * w + k`` for query block ``b``, query at
    ``b * w + o``, so their distance is ``k - w - o``.
    """
    o = torch.arange(window, device=device).unsqueeze(1)      # [w, 1]
    k = torch.arange(3 * window, device=device).unsqueeze(0)  # [1, 3w]
    return (k - window - o).abs() <= window                   # [w, 3w]


def _slab(x: torch.Tensor, window: int) -> torch.Tensor:
    """[..., nb + 2, w, *rest] blocks -> [..., nb, 3w, *rest]: each block with its two neighbours."""
    prev, cur, nxt = x[..., :-2, :, :], x[..., 1:-1, :, :], x[..., 2:, :, :]
    return torch.cat([prev, cur, nxt], dim=-2)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    *,
    global_tokens: Sequence[int] = (),
    key_valid: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Blockwise sliding-window attention; returns ``[B, H, n, d]`` like ``softmax(QK^T)V``.

    ``q``, ``k``, ``v``: ``[B, H, n, d]``. ``key_valid``: ``[B, n]`` bool (False = padding),
    None = all valid. ``global_tokens``: positions (>= 0); those at or past ``n`` are ignored
    so a short input still works. ``n`` need not be a multiple of ``window``.
    """
    bsz, heads, n, d = q.shape
    w = int(window)
    if scaling is None:
        scaling = d ** -0.5
    glob = sorted({int(g) for g in global_tokens if 0 <= int(g) < n})
    if key_valid is None:
        key_valid = torch.ones(bsz, n, dtype=torch.bool, device=q.device)
    key_valid = key_valid.to(torch.bool)
    neg = torch.finfo(q.dtype).min

    nb = -(-n // w)                       # number of query blocks
    pad_r = nb * w - n                    # right padding to a whole block
    # keys/values padded by one block on the left and one (+ remainder) on the right
    kp = F.pad(k, (0, 0, w, w + pad_r))   # [B, H, (nb + 2) w, d]
    vp = F.pad(v, (0, 0, w, w + pad_r))   # [B, H, (nb + 2) w, d]
    local_ok = key_valid
    if glob:  # a global key is attended through its own column, not twice
        is_glob = torch.zeros(n, dtype=torch.bool, device=q.device)
        is_glob[glob] = True
        local_ok = local_ok & ~is_glob                                  # [B, n]
    okp = F.pad(local_ok, (w, w + pad_r), value=False)                  # [B, (nb + 2) w]

    qb = F.pad(q, (0, 0, 0, pad_r)).view(bsz, heads, nb, w, d)          # [B, H, nb, w, d]
    kb = _slab(kp.view(bsz, heads, nb + 2, w, d), w)                    # [B, H, nb, 3w, d]
    vb = _slab(vp.view(bsz, heads, nb + 2, w, d), w)                    # [B, H, nb, 3w, d]
    okb = _slab(okp.view(bsz, nb + 2, w, 1), w).squeeze(-1)             # [B, nb, 3w]
    allowed = band_mask(w, q.device) & okb[:, None, :, None, :]         # [B, 1, nb, w, 3w]

    scores = torch.matmul(qb, kb.transpose(-1, -2)) * scaling           # [B, H, nb, w, 3w]
    scores = scores.masked_fill(~allowed, neg)
    if glob:
        idx = torch.tensor(glob, device=q.device)
        kg, vg = k[:, :, idx], v[:, :, idx]                              # [B, H, g, d]
        sg = torch.matmul(qb, kg[:, :, None].transpose(-1, -2)) * scaling  # [B, H, nb, w, g]
        gok = key_valid[:, idx][:, None, None, None, :]                  # [B, 1, 1, 1, g]
        sg = sg.masked_fill(~gok, neg)
        scores = torch.cat([scores, sg], dim=-1)                        # [B, H, nb, w, 3w + g]
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0.0 and training:
        probs = F.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs[..., : 3 * w], vb)                         # [B, H, nb, w, d]
    if glob:
        out = out + torch.matmul(probs[..., 3 * w:], vg[:, :, None])    # [B, H, nb, w, d]
    out = out.reshape(bsz, heads, nb * w, d)[:, :, :n]                  # [B, H, n, d]

    if glob:  # global rows: dense attention over every valid key, O(g * n)
        qg = q[:, :, idx]                                               # [B, H, g, d]
        s = torch.matmul(qg, k.transpose(-1, -2)) * scaling             # [B, H, g, n]
        s = s.masked_fill(~key_valid[:, None, None, :], neg)
        p = torch.softmax(s, dim=-1)
        if dropout > 0.0 and training:
            p = F.dropout(p, p=dropout, training=True)
        og = torch.matmul(p, v)                                         # [B, H, g, d]
        out = out.index_copy(2, idx, og)
    return out


def dense_window_mask(n: int, window: int, global_tokens: Sequence[int] = (),
                      device: torch.device | None = None) -> torch.Tensor:
    """[n, n] bool: the pattern :func:`window_attention` computes, as a dense matrix."""
    i = torch.arange(n, device=device)
    allowed = (i[:, None] - i[None, :]).abs() <= window                 # [n, n]
    glob = [g for g in global_tokens if 0 <= g < n]
    if glob:
        allowed[glob, :] = True
        allowed[:, glob] = True
    return allowed


def dense_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *,
                           global_tokens: Sequence[int] = (), key_valid: torch.Tensor | None = None,
                           scaling: float | None = None) -> torch.Tensor:
    """O(n^2) masked reference of :func:`window_attention` (tests only)."""
    bsz, _, n, d = q.shape
    scaling = d ** -0.5 if scaling is None else scaling
    allowed = dense_window_mask(n, window, global_tokens, q.device)[None, None]  # [1, 1, n, n]
    if key_valid is not None:
        allowed = allowed & key_valid.to(torch.bool)[:, None, None, :]          # [B, 1, n, n]
    s = torch.matmul(q, k.transpose(-1, -2)) * scaling                          # [B, H, n, n]
    s = s.masked_fill(~allowed, torch.finfo(q.dtype).min)
    return torch.matmul(torch.softmax(s, dim=-1), v)                            # [B, H, n, d]


def window_macs(n: int, window: int, n_global: int, head_dim: int, heads: int) -> int:
    """Multiply-accumulates of the score and value products for one sequence (all heads).

    What the blockwise kernel really does: ``nb * w`` padded queries each against a ``3w``
    slab plus the global columns, twice (QK^T and PV), plus the ``g`` dense global rows.
    """
    nb = -(-n // window)
    g = min(n_global, n)
    per_head = 2 * nb * window * (3 * window + g) * head_dim + 2 * g * n * head_dim
    return heads * per_head
