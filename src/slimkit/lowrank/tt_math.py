"""Tensor-train (TT) matrices: decomposition, products and row lookups, as pure tensor math.

A matrix ``M [R, C]`` whose row count factors as ``R = v_1 * ... * v_d`` and column count as
``C = h_1 * ... * h_d`` is viewed as a d-way tensor whose k-th mode pairs the k-th row digit
with the k-th column digit (Novikov et al. 2015, "Tensorizing neural networks"):

    M[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_d[:, i_d, j_d, :]

with cores ``G_k [r_{k-1}, v_k, h_k, r_k]`` and ``r_0 = r_d = 1``. Row and column indices are
mixed-radix numbers, the first digit most significant (``i = i_1 * v_2 * ... * v_d + ...``).
The cores hold ``sum_k r_{k-1} v_k h_k r_k`` numbers instead of ``R * C``.

Conventions used by :mod:`slimkit.lowrank.tt`: for a Linear ``y = x W^T + b`` the TT-matrix is
``W^T [in, out]`` (rows = input features, columns = outputs); for an embedding it is the
table ``[V, H]`` itself, so a lookup of id ``i`` is row ``i`` (Hrinchuk et al. 2020,
"Tensorized embedding layers"). When ``R`` is not a convenient product it is padded to
``prod(v) >= R`` with zero rows (padded inputs are zero, padded ids are never looked up);
columns likewise, the padded outputs sliced off.

:func:`tt_svd` is the TT-SVD (Oseledets 2011): sequential truncated SVDs of the unfoldings,
exact when no rank is truncated. Written here (not tensorly) because the TT-*matrix*
layout with padding, the per-row gather and the contraction order that keeps every
step a single batched matmul are what the layers need, and each is a few lines.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _divisors(n: int) -> list[int]:
    small = [i for i in range(1, math.isqrt(n) + 1) if n % i == 0]
    return sorted(set(small + [n // i for i in small]))


def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """The factorization of ``n`` into ``d`` factors (1 allowed) with the smallest largest factor.

    Returned in decreasing order. Exhaustive over divisors, fine for the sizes of layers
    (``n`` up to a few million, ``d`` up to 6).
    """
    if n < 1 or d < 1:
        raise ValueError(f"cannot factor {n} into {d} factors")
    best: tuple[int, ...] | None = None

    def search(rest: int, k: int, cap: int, acc: tuple[int, ...]) -> None:
        nonlocal best
        if k == 1:
            if rest <= cap:
                cand = acc + (rest,)
                if best is None or max(cand) < max(best):
                    best = cand
            return
        lo = math.ceil(rest ** (1.0 / k) - 1e-9)  # the largest factor is at least the k-th root
        for f in _divisors(rest):
            if f < lo or f > cap or (best is not None and f >= max(best)):
                continue
            search(rest // f, k - 1, f, acc + (f,))

    search(n, d, n, ())
    assert best is not None
    return tuple(sorted(best, reverse=True))


def factorize(n: int, d: int, *, slack: float = 1.5) -> tuple[int, ...]:
    """``d`` factors whose product is the smallest ``m >= n`` that factors evenly.

    "Evenly": the largest factor is at most ``slack`` times the d-th root of ``n``, so
    ``30522`` (= 2 * 3 * 5087) becomes ``37 x 33 x 25`` (= 30525, 3 padded rows) rather than
    a core with 5087 rows. Always terminates: ``ceil(root) ** d >= n`` factors evenly.
    """
    bound = max(2, math.ceil(slack * n ** (1.0 / d)))
    m = n
    while True:
        f = balanced_factors(m, d)
        if max(f) <= bound:
            return f
        m += 1


def max_ranks(row_factors: Sequence[int], col_factors: Sequence[int]) -> list[int]:
    """The full TT ranks ``r_1 .. r_{d-1}``: ``min(prod of modes left, prod of modes right)``."""
    modes = [v * h for v, h in zip(row_factors, col_factors)]
    return [min(math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))]


def resolve_ranks(row_factors: Sequence[int], col_factors: Sequence[int], ranks: Sequence[int] | None,
                  max_rank: int | None) -> list[int]:
    """Internal ranks ``r_1 .. r_{d-1}``: the given list or ``max_rank`` for each, capped at the full ranks."""
    full = max_ranks(row_factors, col_factors)
    if ranks is not None:
        if len(ranks) != len(full):
            raise ValueError(f"{len(row_factors)} cores need {len(full)} internal ranks, got {list(ranks)}")
        want = list(ranks)
    else:
        want = [max_rank if max_rank is not None else f for f in full]
    return [max(1, min(w, f)) for w, f in zip(want, full)]


def tt_params(row_factors: Sequence[int], col_factors: Sequence[int], ranks: Sequence[int]) -> int:
    """Numbers stored by the cores: ``sum_k r_{k-1} v_k h_k r_k``."""
    r = [1, *ranks, 1]
    return sum(r[k] * v * h * r[k + 1] for k, (v, h) in enumerate(zip(row_factors, col_factors)))


def pad_matrix(m: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``m [R, C]`` with zero rows / columns appended to ``[rows, cols]``."""
    return torch.nn.functional.pad(m, (0, cols - m.shape[1], 0, rows - m.shape[0]))


def tt_svd(matrix: torch.Tensor, row_factors: Sequence[int], col_factors: Sequence[int],
           ranks: Sequence[int]) -> list[torch.Tensor]:
    """TT-SVD of ``matrix [R, C]`` (zero-padded to ``[prod v, prod h]``) into cores ``[r_{k-1}, v_k, h_k, r_k]``.

    ``ranks`` are the internal ranks (capped at what each unfolding allows). Computed in
    float64, returned in the matrix's dtype. Exact at full rank; each truncation keeps the
    leading singular vectors of one unfolding (quasi-optimal: the error is at most
    ``sqrt(d - 1)`` times the best TT approximation's).
    """
    d = len(row_factors)
    rows, cols = math.prod(row_factors), math.prod(col_factors)
    m = pad_matrix(matrix.detach().to(torch.float64), rows, cols)  # [prod v, prod h]
    # [v_1..v_d, h_1..h_d] -> [v_1, h_1, v_2, h_2, ..., v_d, h_d]: mode k = (v_k, h_k)
    t = m.reshape(*row_factors, *col_factors).permute(*[i for k in range(d) for i in (k, d + k)])
    rest = t.reshape(1, -1)  # [r_0 = 1, everything]
    cores = []
    r_prev = 1
    for k in range(d - 1):
        v, h = row_factors[k], col_factors[k]
        unfold = rest.reshape(r_prev * v * h, -1)  # [r_{k-1} v_k h_k, rest]
        u, s, vh = torch.linalg.svd(unfold, full_matrices=False)
        r = max(1, min(int(ranks[k]), s.numel()))
        cores.append(u[:, :r].reshape(r_prev, v, h, r))  # [r_{k-1}, v_k, h_k, r_k]
        rest = s[:r, None] * vh[:r]  # [r_k, rest]
        r_prev = r
    cores.append(rest.reshape(r_prev, row_factors[-1], col_factors[-1], 1))
    return [c.to(matrix.dtype).contiguous() for c in cores]


def tt_full(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The whole (padded) matrix ``[prod v, prod h]`` the cores represent (tests and inspection)."""
    d = len(cores)
    t = cores[0]  # [1, v_1, h_1, r_1]
    for core in cores[1:]:
        # [1, A, B, r] x [r, v, h, s] -> [1, A, v, B, h, s] with A, B the digits so far
        t = torch.einsum("xabr,rvhs->xavbhs", t, core)
        t = t.reshape(1, t.shape[1] * t.shape[2], t.shape[3] * t.shape[4], t.shape[5])
    assert t.shape[0] == 1 and t.shape[-1] == 1, d
    return t[0, :, :, 0]


def tt_matmul(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x [N, prod v] @ M [prod v, prod h]`` -> ``[N, prod h]`` by contracting one core at a time.

    The state after k cores is ``[N, v_{k+1} .. v_d (still to contract), h_1 .. h_k (produced), r_k]``;
    each step contracts the next input digit and the rank with one core (one batched matmul,
    ``N * prod(v_{>k}) * prod(h_{<k}) * r_{k-1} v_k * h_k r_k`` MACs), never forming ``M``.
    """
    n = x.shape[0]
    t = x.reshape(n, x.shape[1], 1, 1)  # [N, prod v, B = 1, r_0 = 1]
    for core in cores:
        r, v, h, s = core.shape
        t = t.reshape(n, v, -1, t.shape[2], r)  # [N, v_k, A (v digits left), B (h digits done), r_{k-1}]
        t = torch.einsum("nvabr,rvhs->nabhs", t, core)  # [N, A, B, h_k, r_k]
        t = t.reshape(n, t.shape[1], t.shape[2] * h, s)  # [N, A, B * h_k, r_k]
    return t.reshape(n, -1)  # [N, prod h] (A = 1, r_d = 1)


def tt_matmul_macs(n: int, row_factors: Sequence[int], col_factors: Sequence[int], ranks: Sequence[int]) -> int:
    """MACs of :func:`tt_matmul` on ``n`` rows (what ``measure.profile`` counts at ATen level)."""
    r = [1, *ranks, 1]
    total = 0
    for k, (v, h) in enumerate(zip(row_factors, col_factors)):
        left = math.prod(row_factors[k + 1:])
        done = math.prod(col_factors[:k])
        total += n * left * done * r[k] * v * h * r[k + 1]
    return total


def mixed_radix_digits(ids: torch.Tensor, row_factors: Sequence[int]) -> list[torch.Tensor]:
    """Digits ``i_1 .. i_d`` of each id (first digit most significant), each shaped like ``ids``."""
    digits = []
    stride = math.prod(row_factors)
    for v in row_factors:
        stride //= v
        digits.append(torch.div(ids, stride, rounding_mode="floor") % v)
    return digits


def tt_rows(cores: Sequence[torch.Tensor], ids: torch.Tensor, row_factors: Sequence[int]) -> torch.Tensor:
    """Rows ``M[ids]`` -> ``[N, prod h]`` for flat ``ids [N]``, reconstructing only those rows.

    Per core, the slice of each id's digit is gathered (``[N, r_{k-1}, h_k, r_k]``), then
    the slices are chained by batched matmuls: ``N * sum_k prod(h_{<k}) r_{k-1} h_k r_k`` MACs.
    """
    n = ids.shape[0]
    t = ids.new_ones(()).to(cores[0].dtype).expand(n, 1, 1)  # [N, B = 1, r_0 = 1]
    for core, digit in zip(cores, mixed_radix_digits(ids, row_factors)):
        r, _, h, s = core.shape
        g = core.transpose(0, 1)[digit]  # [N, r_{k-1}, h_k, r_k]
        t = torch.bmm(t, g.reshape(n, r, h * s)).reshape(n, -1, s)  # [N, B * h_k, r_k]
    return t.reshape(n, -1)  # [N, prod h]


def tt_rows_macs(n: int, col_factors: Sequence[int], ranks: Sequence[int]) -> int:
    """MACs of :func:`tt_rows` for ``n`` ids."""
    r = [1, *ranks, 1]
    return sum(n * math.prod(col_factors[:k]) * r[k] * h * r[k + 1] for k, h in enumerate(col_factors))


__all__ = ["balanced_factors", "factorize", "max_ranks", "mixed_radix_digits", "pad_matrix", "resolve_ranks",
           "tt_full", "tt_matmul", "tt_matmul_macs", "tt_params", "tt_rows", "tt_rows_macs", "tt_svd"]
