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

The slab (and the global keys every block also reads) is ONE ``index_select`` of the
padded keys with a precomputed index, and each block is then an ordinary 4-D
``scaled_dot_product_attention`` call with a boolean mask (blocks folded into the batch),
so the fused CPU kernel does the work and ``torch.export`` / ONNX see standard ops. An
earlier version built the slab with three ``cat``-ed shifted views and a hand-written
masked softmax: correct, but the extra passes over the scores made it slower than the
dense SDPA it replaces below 4k tokens.

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
    so a short input still works. ``n`` need not be a multiple of ``window``. When the input
    is no longer than one slab (``n <= 3w + g``) the blockwise layout would do MORE work than
    the dense matrix, so the same pattern is applied as one dense masked SDPA call (with no
    mask at all when the window covers everything: short inputs cost what they did). ONNX
    export always traces the blockwise path, whose graph serves any length; the dense
    shortcut, traced, would only serve inputs on its side of the switch. A query whose
    window holds only padding (a padding token far from real text) also sees itself, so no
    row is empty and no NaN can leak into the next layer; real tokens never see padding.
    """
    bsz, heads, n, d = q.shape
    w = int(window)
    glob = sorted({int(g) for g in global_tokens if 0 <= int(g) < n})
    g = len(glob)
    dev = q.device
    key_valid_given = key_valid is not None
    if key_valid is None:
        key_valid = torch.ones(bsz, n, dtype=torch.bool, device=dev)
    key_valid = key_valid.to(torch.bool)
    p = dropout if training else 0.0
    if n <= 3 * w + g and not torch.onnx.is_in_onnx_export():
        # a single slab would span the whole input: one dense masked call does less work, exactly
        if w >= n - 1 and not key_valid_given:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scaling)  # the full attention
        allowed = dense_window_mask(n, w, glob, dev)[None, None] & key_valid[:, None, None, :]  # [B, 1, n, n]
        allowed = allowed | torch.eye(n, dtype=torch.bool, device=dev)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p, scale=scaling)

    nb = (n + w - 1) // w                             # query blocks (no negative floor division: ONNX truncates)
    # token-major views ([B, n, H, d]) so a block of rows is one contiguous slice
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    # constant pads then a slice (not a pad of pad_r): a traced ONNX graph then serves every length
    kp = F.pad(kt, (0, 0, 0, 0, w, 2 * w))[:, : (nb + 2) * w]   # [B, (nb + 2) w, H, d]
    vp = F.pad(vt, (0, 0, 0, 0, w, 2 * w))[:, : (nb + 2) * w]   # [B, (nb + 2) w, H, d]
    # key index of every block: its 3w slab (block-1, block, block+1 in padded coords), then the globals
    idx = slab_index(nb, w, glob, dev)                # [nb * (3w + g)]
    kb = kp.index_select(1, idx).reshape(bsz, nb, 3 * w + g, heads, d).transpose(2, 3)  # [B, nb, H, 3w+g, d]
    vb = vp.index_select(1, idx).reshape(bsz, nb, 3 * w + g, heads, d).transpose(2, 3)  # [B, nb, H, 3w+g, d]
    qb = F.pad(qt, (0, 0, 0, 0, 0, w))[:, : nb * w].reshape(bsz, nb, w, heads, d).transpose(2, 3)  # [B, nb, H, w, d]

    local_ok = key_valid
    if glob:  # a global key is attended through its own column, not a second time in the slab
        is_glob = torch.zeros(n, dtype=torch.bool, device=dev)
        is_glob[glob] = True
        local_ok = local_ok & ~is_glob                                           # [B, n]
    okp = F.pad(local_ok, (w, 2 * w), value=False)[:, : (nb + 2) * w]            # [B, (nb + 2) w]
    keys_ok = okp.index_select(1, idx).view(bsz, nb, 3 * w + g)                  # [B, nb, 3w+g]
    if glob:  # the global columns read the real validity (the slab copy of them is masked)
        keys_ok = torch.cat([keys_ok[..., : 3 * w], key_valid[:, None, glob].expand(bsz, nb, g)], dim=-1)
    keys_ok = keys_ok.unsqueeze(2)                                               # [B, nb, 1, 3w+g]
    pattern, diag = block_pattern(w, g, dev)                                     # [w, 3w+g] each
    allowed = (pattern & keys_ok) | diag                                         # [B, nb, w, 3w+g]

    out = F.scaled_dot_product_attention(
        qb.reshape(bsz * nb, heads, w, d), kb.reshape(bsz * nb, heads, 3 * w + g, d),
        vb.reshape(bsz * nb, heads, 3 * w + g, d), attn_mask=allowed.view(bsz * nb, 1, w, 3 * w + g),
        dropout_p=p, scale=scaling)                                              # [B nb, H, w, d]
    out = out.view(bsz, nb, heads, w, d).transpose(2, 3).reshape(bsz, nb * w, heads, d)[:, :n]  # [B, n, H, d]

    if glob:  # global rows: dense attention over every valid key, O(g * n)
        gi = torch.tensor(glob, device=dev)
        see = key_valid[:, None, None, :] | (torch.arange(n, device=dev) == gi[:, None])[None, None]  # [B, 1, g, n]
        og = F.scaled_dot_product_attention(q.index_select(2, gi), k, v, attn_mask=see,
                                            dropout_p=p, scale=scaling)          # [B, H, g, d]
        out = out.index_copy(1, gi, og.transpose(1, 2))                          # [B, n, H, d]
    return out.transpose(1, 2)                                                   # [B, H, n, d]


def slab_index(nb: int, window: int, glob: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """[nb * (3w + g)] long: for each block, the padded key rows it reads (slab, then globals).

    Keys are padded by one block on the left, so block ``b``'s slab starts at padded row
    ``b * w``; global token ``t`` lives at padded row ``t + w``.
    """
    w = window
    slab = torch.arange(nb, device=device)[:, None] * w + torch.arange(3 * w, device=device)[None]  # [nb, 3w]
    if glob:
        gl = torch.tensor([t + w for t in glob], device=device)[None].expand(nb, -1)                  # [nb, g]
        slab = torch.cat([slab, gl], dim=1)                                                           # [nb, 3w+g]
    return slab.reshape(-1)


def block_pattern(window: int, n_global: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pattern, diag)``, both [w, 3w + g] bool: the band plus the global columns, and each query's own key."""
    band = band_mask(window, device)                                                              # [w, 3w]
    pattern = F.pad(band, (0, n_global), value=True)                                              # [w, 3w+g]
    o = torch.arange(window, device=device)[:, None]
    diag = F.pad(torch.arange(3 * window, device=device)[None] == o + window, (0, n_global), value=False)
    return pattern, diag


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
    allowed = allowed | torch.eye(n, dtype=torch.bool, device=q.device)         # a row is never empty
    s = torch.matmul(q, k.transpose(-1, -2)) * scaling                          # [B, H, n, n]
    s = s.masked_fill(~allowed, torch.finfo(q.dtype).min)
    return torch.matmul(torch.softmax(s, dim=-1), v)                            # [B, H, n, d]


def window_macs(n: int, window: int, n_global: int, head_dim: int, heads: int) -> int:
    """Multiply-accumulates of the score and value products for one sequence (all heads).

    What the blockwise kernel really does: ``nb * w`` padded queries each against a ``3w``
    slab plus the global columns, twice (QK^T and PV), plus the ``g`` dense global rows.
    """
    g = min(n_global, n)
    if n <= 3 * window + g:  # the short-input path: one dense masked call
        return heads * 2 * n * n * head_dim
    nb = (n + window - 1) // window
    per_head = 2 * nb * window * (3 * window + g) * head_dim + 2 * g * n * head_dim
    return heads * per_head
