"""Index maps of weight tying inside one matrix: HashedNets buckets, circulant and Toeplitz blocks.

All three layers of :mod:`slimkit.share.structured_layers` store a small real vector ``w``
and define a virtual ``out x in`` weight ``W[i, j] = sign[i, j] * w[index[i, j]]``. This
module is the pure math: which entry of ``w`` each virtual weight reads, and the
least-squares projection of a dense weight onto that family (each ``w[k]`` is the mean of
the signed dense entries that read it: the entries are independent, so the least-squares
fit of one parameter is the mean of the values it must reproduce).

The HashedNets hash is computed on int64 tensors with 31-bit arithmetic (every product
stays below 2**62, so nothing overflows): the result depends only on the seed and the
entry's position, never on Python's randomised ``hash()``, the CPU or the thread count.
"""
from __future__ import annotations

import torch

_MASK31 = (1 << 31) - 1
_MIX = 0x45D9F3B  # the odd multiplier of a well-tested 32-bit integer finaliser, < 2**27


def mix31(x: torch.Tensor) -> torch.Tensor:
    """A bijective-ish scramble of non-negative int64 values into ``[0, 2**31)``.

    Three xor-shift / multiply rounds on 31-bit values: ``x < 2**31`` and the multiplier
    ``< 2**27`` keep every product below ``2**58``, so int64 arithmetic is exact everywhere.
    """
    x = x & _MASK31
    x = x ^ (x >> 16)
    x = (x * _MIX) & _MASK31
    x = x ^ (x >> 16)
    x = (x * _MIX) & _MASK31
    return x ^ (x >> 16)


def hashed_index(out_features: int, in_features: int, size: int, seed: int) -> torch.Tensor:
    """HashedNets bucket and sign of every virtual weight, as one int64 index ``[out, in]``.

    ``index < size`` reads ``+w[index]``, ``index >= size`` reads ``-w[index - size]``
    (materialize with ``cat([w, -w])[index]``). Bucket and sign come from two independent
    hashes of the entry's flat position ``i * in + j`` salted with ``seed`` (Chen et al.
    2015 use a second hash for the sign so that collisions cancel in expectation).
    """
    if size < 1:
        raise ValueError(f"hashed size must be >= 1, got {size}")
    pos = torch.arange(out_features * in_features, dtype=torch.int64)  # [out*in]
    lo, hi = pos & _MASK31, pos >> 31  # positions beyond 2**31 fold their high bits in
    salt_b = int(mix31(torch.tensor([2 * seed + 1]))[0])
    salt_s = int(mix31(torch.tensor([2 * seed + 2]))[0])
    bucket = mix31(mix31(lo ^ salt_b) ^ hi) % size
    negative = (mix31(mix31(lo ^ salt_s) + 0x9E3779B) ^ hi) & 1
    return (bucket + negative * size).reshape(out_features, in_features)


def _block_coords(out_features: int, in_features: int, block: int) -> tuple[torch.Tensor, ...]:
    """Block row/column and in-block offsets of every entry of an ``out x in`` matrix."""
    r = torch.arange(out_features, dtype=torch.int64)[:, None]  # [out, 1]
    s = torch.arange(in_features, dtype=torch.int64)[None, :]  # [1, in]
    return r // block, s // block, r % block, s % block


def blocks(features: int, block: int) -> int:
    """Number of ``block``-sized blocks covering ``features`` (the last one zero-padded)."""
    return -(-features // block)


def circulant_index(out_features: int, in_features: int, block: int) -> torch.Tensor:
    """Block-circulant index ``[out, in]`` into ``w`` of shape ``[p, q, block]`` (flattened).

    Block ``(bi, bj)`` is the circulant with first column ``c = w[bi, bj]``:
    ``C[r, s] = c[(r - s) mod block]`` (so ``C @ x = irfft(rfft(c) * rfft(x))``).
    """
    q = blocks(in_features, block)
    bi, bj, rr, ss = _block_coords(out_features, in_features, block)
    return (bi * q + bj) * block + (rr - ss) % block


def toeplitz_index(out_features: int, in_features: int, block: int) -> torch.Tensor:
    """Block-Toeplitz index ``[out, in]`` into ``w`` of shape ``[p, q, 2*block - 1]`` (flattened).

    Block ``(bi, bj)`` is the Toeplitz matrix ``T[r, s] = t[r - s + block - 1]`` with
    ``t = w[bi, bj]`` (its first row reversed, then its first column).
    """
    q = blocks(in_features, block)
    bi, bj, rr, ss = _block_coords(out_features, in_features, block)
    return (bi * q + bj) * (2 * block - 1) + (rr - ss + block - 1)


def toeplitz_to_circulant(t: torch.Tensor) -> torch.Tensor:
    """First columns ``[..., 2b]`` of the circulants of size ``2b`` that embed Toeplitz blocks ``t [..., 2b-1]``.

    ``c[k] = T[k, 0] = t[k + b - 1]`` for ``k < b``, ``c[b] = 0``, ``c[2b - k] = T[0, k] = t[b - 1 - k]``;
    then ``T @ x = (C @ [x; 0])[:b]``.
    """
    b = (t.shape[-1] + 1) // 2
    zero = t.new_zeros(*t.shape[:-1], 1)
    return torch.cat([t[..., b - 1:], zero, t[..., : b - 1]], dim=-1)


def project(weight: torch.Tensor, index: torch.Tensor, size: int, *, signed: bool = False) -> torch.Tensor:
    """Least-squares ``w [size]`` for ``weight ~ table(w)[index]`` (the mean of the entries per parameter).

    ``signed``: ``index >= size`` means the entry reads ``-w[index - size]`` (HashedNets).
    A parameter no entry reads (a padded corner of a block, an empty hash bucket) is 0.
    """
    flat = weight.detach().reshape(-1).to(torch.float64)  # [out*in]
    idx = index.reshape(-1)
    if signed:
        flat = torch.where(idx >= size, -flat, flat)
        idx = idx % size
    sums = torch.zeros(size, dtype=torch.float64).index_add_(0, idx, flat)
    counts = torch.bincount(idx, minlength=size).to(torch.float64)
    return (sums / counts.clamp_min(1)).to(weight.dtype)


__all__ = ["blocks", "circulant_index", "hashed_index", "mix31", "project", "toeplitz_index",
           "toeplitz_to_circulant"]
