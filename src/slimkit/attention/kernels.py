"""The math of the attention conversions, apart from any module surgery.

- :func:`pool_projection`: Linformer's sequence projection initialised as average pooling
  over ``k`` consecutive segments (the identity when ``k == max_len``).
- :func:`linformer_attend`: softmax attention against the ``k`` projected keys / values.
- :func:`orthogonal_features`, :func:`favor_features`, :func:`elu_features`: the feature
  maps of kernelized attention; :func:`linear_attend`: the O(N) attention they allow.

Shapes: ``q, k, v`` are ``[B, H, N, d]``; ``keep`` is ``[B, N]`` bool (True = real token) or None.
"""
from __future__ import annotations

import math

import torch


def pool_projection(k: int, max_len: int) -> torch.Tensor:
    """``[max_len, k]``: column ``j`` averages positions ``floor(j*L/k) .. floor((j+1)*L/k) - 1``.

    Pooled keys and values are what a converted model sees at initialisation, so it starts
    as attention over segment means (exactly the original attention when ``k == max_len``)
    rather than over random projections, which would start far from the trained model.
    Stored positions-first so that the first ``N`` rows are a contiguous slice for any
    length (``torch.export`` then keeps the sequence length symbolic).
    """
    bounds = [(j * max_len) // k for j in range(k + 1)]
    e = torch.zeros(max_len, k)
    for j in range(k):
        lo, hi = bounds[j], max(bounds[j + 1], bounds[j] + 1)
        e[lo:hi, j] = 1.0 / (hi - lo)
    return e


def linformer_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
                     e: torch.Tensor, f: torch.Tensor, scaling: float, dropout: float = 0.0,
                     training: bool = False) -> torch.Tensor:
    """Softmax attention of every query against ``E^T k`` and ``F^T v`` (``E, F``: ``[max_len, kp]``).

    Padded keys are zeroed before projecting, so appended padding changes nothing. A
    projected slot whose column of ``E`` and ``F`` is zero on every real token (a pooling
    segment beyond the sequence's length) carries no information and is masked out of the
    softmax; without that a short sentence's attention would leak onto empty slots.
    Cost: ``O(N * kp * d)`` per head instead of ``O(N^2 * d)``.
    """
    n = k.shape[-2]
    en, fn = e.narrow(0, 0, n), f.narrow(0, 0, n)  # [N, kp]
    support = ((en != 0) | (fn != 0)).to(k.dtype)  # [N, kp]
    if keep is not None:
        m = keep.to(k.dtype)[:, None, :, None]  # [B, 1, N, 1]
        k, v = k * m, v * m
        live = (keep.to(k.dtype) @ support) > 0  # [B, N] @ [N, kp] -> [B, kp]
    else:
        live = (support.sum(0) > 0)[None, :]  # [1, kp]
    kpt = torch.matmul(k.transpose(-1, -2), en)  # [B, H, d, N] @ [N, kp] -> [B, H, d, kp]  (projected keys^T)
    vp = torch.matmul(v.transpose(-1, -2), fn).transpose(-1, -2)  # [B, H, kp, d]
    scores = torch.matmul(q, kpt) * scaling  # [B, H, N, kp]
    scores = scores.masked_fill(~live[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = torch.nn.functional.dropout(scores.softmax(-1), p=dropout, training=training)
    return torch.matmul(probs, vp)  # [B, H, N, d]


def orthogonal_features(m: int, d: int, seed: int) -> torch.Tensor:
    """``[m, d]`` Gaussian random features drawn in orthogonal blocks of ``d`` (Performer's ORF).

    Each block is the Q of a Gaussian matrix's QR, rows rescaled by the norms of fresh
    Gaussian vectors so every row is still distributed like a Gaussian; orthogonality
    lowers the variance of the softmax-kernel estimate (Choromanski et al. 2021, §4).
    Deterministic in ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=gen, dtype=torch.float64)
        qm, _ = torch.linalg.qr(g)
        blocks.append(qm.t())  # rows orthonormal
    w = torch.cat(blocks)[:m]  # [m, d]
    norms = torch.randn(m, d, generator=gen, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).to(torch.float32)


def favor_features(x: torch.Tensor, w: torch.Tensor, scaling: float, *, is_query: bool,
                   keep: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Positive random features ``phi(x)`` ``[B, H, N, m]`` with ``phi(q) . phi(k) ~ exp(scaling * q . k)``.

    FAVOR+ (Choromanski et al. 2021): ``phi(x) = exp(w x' - |x'|^2 / 2) / sqrt(m)`` with
    ``x' = x * scaling**0.5``. For stability a maximum is subtracted inside the ``exp``:
    per query row for queries, over all real keys of a (sequence, head) for keys; both are
    constant factors that cancel between the numerator and denominator of linear attention.
    The key maximum ignores padded keys, so appended padding cannot change the result.
    """
    xs = x * scaling ** 0.5
    proj = torch.matmul(xs, w.t().to(x.dtype))  # [B, H, N, d] @ [d, m] -> [B, H, N, m]
    diag = (xs * xs).sum(-1, keepdim=True) / 2  # [B, H, N, 1]
    if is_query:
        stab = proj.amax(dim=-1, keepdim=True)  # [B, H, N, 1]
    else:
        if keep is not None:  # padded keys: exp(-huge) = 0, and no gradient through their garbage values
            proj = proj.masked_fill(~keep[:, None, :, None], torch.finfo(proj.dtype).min)
        stab = proj.amax(dim=(-1, -2), keepdim=True)  # [B, H, 1, 1]
    return (torch.exp(proj - diag - stab) + eps) / math.sqrt(w.shape[0])


def elu_features(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` (Katharopoulos et al. 2020): positive, cheap, not a softmax approximation."""
    return torch.nn.functional.elu(x) + 1.0


def linear_attend(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
                  eps: float = 1e-12) -> torch.Tensor:
    """``phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j))``: attention in ``O(N * m * d)``.

    ``qf, kf`` ``[B, H, N, m]`` are positive features; padded keys are zeroed so they
    contribute to neither sum.
    """
    if keep is not None:
        kf = kf * keep.to(kf.dtype)[:, None, :, None]
    kv = torch.matmul(kf.transpose(-1, -2), v)  # [B, H, m, N] @ [B, H, N, d] -> [B, H, m, d]
    z = kf.sum(dim=-2, keepdim=True)  # [B, H, 1, m]
    num = torch.matmul(qf, kv)  # [B, H, N, d]
    den = torch.matmul(qf, z.transpose(-1, -2))  # [B, H, N, m] @ [B, H, m, 1] -> [B, H, N, 1]
    return num / den.clamp_min(eps)


__all__ = ["pool_projection", "linformer_attend", "orthogonal_features", "favor_features", "elu_features",
           "linear_attend"]
