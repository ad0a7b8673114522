"""Truncated SVD of a weight matrix, and how to choose its rank: the math of ``lowrank.svd``.

No module surgery here (that is :mod:`.svd_method`): weights in, factors and ranks out.

A weight ``W [out, in]`` is replaced by ``A [out, r] @ B [r, in]``, which costs
``r * (out + in)`` parameters and MACs per token instead of ``out * in``; it is smaller
only while ``r < out * in / (out + in)`` (:func:`break_even_rank`).

Plain SVD minimises the *weight* error ``||W - AB||_F``. What matters is the *output*
error ``||(W - AB) X^T||_F`` on the inputs the layer really sees, and inputs are far from
isotropic (a few directions carry most of the activation energy). The data-aware variant
(ASVD / SVD-LLM) whitens first: with the input Gram ``G = X^T X = L L^T`` (Cholesky),

    ||(W - W') X^T||_F^2 = tr((W - W') G (W - W')^T) = ||(W - W') L||_F^2,

so the best rank-r ``W'`` is the truncated SVD of ``W L`` mapped back:
``W L ~ U_r S_r V_r^T`` -> ``A = U_r sqrt(S_r)``, ``B = sqrt(S_r) V_r^T L^{-1}``. A Gram that is
singular (an input feature that never varies, fewer tokens than features) is damped by
``damping * mean(diag G)`` on its diagonal before the factorization.

The singular values are split evenly (``sqrt(S)`` on both sides): the product is the
same as ``U S`` / ``V^T`` and both factors get comparable scales, which suits the
recovery training that usually follows.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..core import MethodError


def break_even_rank(out_f: int, in_f: int) -> int:
    """The largest rank whose two factors hold fewer parameters than the dense ``[out, in]`` matrix."""
    return max(0, (out_f * in_f - 1) // (out_f + in_f))


def factored_params(out_f: int, in_f: int, rank: int) -> int:
    """Parameters of ``A [out, r]`` plus ``B [r, in]`` (biases are unchanged and not counted)."""
    return rank * (out_f + in_f)


def whitener(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """Lower Cholesky factor ``L`` of ``gram + damping * mean(diag) * I`` ([in, in], float64).

    ``damping`` is relative to the Gram's mean diagonal, so it means the same for any input
    scale. If the damped Gram is still not positive definite (numerically), the damping is
    raised tenfold up to four times; after that the layer cannot be whitened.
    """
    g = gram.to(torch.float64)  # [in, in]
    n = g.shape[0]
    scale = float(torch.diagonal(g).mean()) if n else 0.0
    scale = scale if scale > 0 else 1.0
    eye = torch.eye(n, dtype=torch.float64)
    lam = damping
    for _ in range(5):
        chol, info = torch.linalg.cholesky_ex(g + (lam * scale) * eye)
        if int(info) == 0:
            return chol
        lam = max(lam * 10, 1e-6)
    raise MethodError(f"the input Gram matrix ({n}x{n}) is not positive definite even with damping {lam / 10:g}; "
                      "raise `damping` or use more calibration batches")


def decompose(weight: torch.Tensor, chol: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``(U [out, k], s [k], V^T [k, in])`` in float64 of ``W`` or, data-aware, of ``W L``.

    Computed once per layer: the rank rules read ``s``, :func:`truncate` the rest.
    """
    w = weight.detach().to(torch.float64)  # [out, in]
    return torch.linalg.svd(w @ chol if chol is not None else w, full_matrices=False)


def spectrum(weight: torch.Tensor, chol: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values (descending, float64) of ``W`` or, data-aware, of ``W L``."""
    w = weight.detach().to(torch.float64)  # [out, in]
    return torch.linalg.svdvals(w @ chol if chol is not None else w)  # [min(out, in)]


def truncate(svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rank: int, chol: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [out, r], B [r, in])`` from a :func:`decompose` result (``chol``: the same whitener)."""
    u, s, vh = svd
    if not 1 <= rank <= s.numel():
        raise MethodError(f"rank {rank} is outside [1, {s.numel()}] for a {u.shape[0]}x{vh.shape[1]} weight")
    root = s[:rank].sqrt()  # [r]
    a = u[:, :rank] * root  # [out, r]
    b = root[:, None] * vh[:rank]  # [r, in]
    if chol is not None:
        # B L^{-1}: solve X L = B for X, i.e. L^T X^T = B^T (L lower triangular)
        b = torch.linalg.solve_triangular(chol.T, b.T, upper=True).T  # [r, in]
    return a.to(dtype), b.to(dtype)


def factorize(weight: torch.Tensor, rank: int, chol: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [out, r], B [r, in])`` with ``A @ B`` the best rank-``r`` approximation of ``weight``.

    Best in the weight's Frobenius norm, or with ``chol`` (:func:`whitener` of the input
    Gram) in the output error on those inputs. Computed in float64, returned in the
    weight's dtype.
    """
    if not 1 <= rank <= min(weight.shape):
        raise MethodError(f"rank {rank} is outside [1, {min(weight.shape)}] for a "
                          f"{weight.shape[0]}x{weight.shape[1]} weight")
    return truncate(decompose(weight, chol), rank, chol, weight.dtype)


def rank_for_ratio(out_f: int, in_f: int, ratio: float) -> int:
    """The rank whose factors hold about ``ratio`` of the dense parameters (at least 1)."""
    return max(1, min(min(out_f, in_f), int(ratio * out_f * in_f / (out_f + in_f))))


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of the total squared ones."""
    e = s.to(torch.float64) ** 2
    total = float(e.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(e, 0) / total  # [k], non-decreasing
    return min(int((kept < energy - 1e-12).sum()) + 1, s.numel())


def allocate_budget(spectra: Mapping[str, tuple[torch.Tensor, int, int]], fraction: float) -> dict[str, int | None]:
    """Ranks for several layers that together keep at most ``fraction`` of their dense parameters.

    ``spectra`` maps a layer to ``(singular values, out, in)``; a rank of ``None`` means *keep
    the layer dense*. Each layer's options are rank 1 .. its break-even rank (cost
    ``r * (out + in)``, value the share of the layer's squared singular values kept, so a
    layer's weight scale buys it nothing) and dense (cost ``out * in``, value 1). Every layer
    starts at rank 1; then the steps along the upper concave hull of each layer's
    (cost, value) points are taken greedily by value per parameter across all layers, while
    they fit the budget: water-filling on the hull, the optimum of the relaxed separable
    problem. The dense option matters near the break-even rank: two thin factors that save
    a few percent of the parameters cost a second matrix product, so a layer either gets a
    rank well below break-even or stays dense. If rank 1 everywhere already exceeds the
    budget, every layer gets rank 1.
    """
    dense = sum(o * i for _, o, i in spectra.values())
    budget = fraction * dense
    ranks: dict[str, int | None] = {name: 1 for name in spectra}
    spent = sum(o + i for _, o, i in spectra.values())
    steps: list[tuple[float, int, str, int | None, float]] = []  # (value per param, order, layer, rank, cost)
    for name, (s, o, i) in spectra.items():
        e = s.to(torch.float64) ** 2
        kept = (torch.cumsum(e, 0) / (float(e.sum()) or 1.0)).tolist()
        cap = min(break_even_rank(o, i), s.numel())
        points = [(float(r * (o + i)), kept[r - 1], r) for r in range(1, cap + 1)]
        points.append((float(o * i), 1.0, None))
        hull = _upper_hull(points)
        for k, (a, b) in enumerate(zip(hull, hull[1:])):
            steps.append(((b[1] - a[1]) / (b[0] - a[0]), k, name, b[2], b[0] - a[0]))
    steps.sort(key=lambda t: (-t[0], t[1]))
    taken = {name: 0 for name in spectra}  # hull steps taken per layer (they must be taken in order)
    for _, k, name, rank, cost in steps:
        if taken[name] != k or spent + cost > budget:
            continue
        ranks[name] = rank
        taken[name] += 1
        spent += cost
    return ranks


def _upper_hull(points: list[tuple[float, float, int | None]]) -> list[tuple[float, float, int | None]]:
    """The upper concave hull of points sorted by cost, from the first to the last (monotone chain)."""
    hull: list[tuple[float, float, int | None]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # hull[-1] on or under the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def relative_error(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None = None) -> float:
    """``||W - AB|| / ||W||``, or with inputs ``x [N, in]`` the output error ``||x (W - AB)^T|| / ||x W^T||``."""
    w = weight.to(torch.float64)
    d = w - a.to(torch.float64) @ b.to(torch.float64)  # [out, in]
    if x is None:
        return float(d.norm() / w.norm().clamp_min(1e-30))
    x = x.to(torch.float64)
    return float((x @ d.T).norm() / (x @ w.T).norm().clamp_min(1e-30))


__all__ = ["allocate_budget", "break_even_rank", "decompose", "factored_params", "factorize", "truncate", "rank_for_energy", "rank_for_ratio",
           "relative_error", "spectrum", "whitener"]
