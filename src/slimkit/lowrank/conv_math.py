"""Tensor decompositions of a Conv2d kernel (pure math: tensors in, factors out; no module surgery).

A kernel ``W [C_out, C_in, kh, kw]`` is factorized two ways:

- **Tucker-2** (Kim et al. 2016): ``W ~ G x_0 U_out x_1 U_in`` with ``U_out [C_out, R_out]``,
  ``U_in [C_in, R_in]`` orthonormal and a core ``G [R_out, R_in, kh, kw]``; as layers, a 1x1
  conv ``C_in -> R_in`` (weight ``U_in^T``), the ``kh x kw`` core conv ``R_in -> R_out`` (same
  stride, padding, dilation) and a 1x1 conv ``R_out -> C_out`` (weight ``U_out``, the bias).
  Computed by HOSVD and refined by HOOI (alternating SVDs of the two unfoldings), the same
  algorithm as tensorly's ``partial_tucker``.
- **CP** of rank ``R`` (Lebedev et al. 2015): ``W[o,i,y,x] ~ sum_r A[o,r] B[i,r] Y[y,r] X[x,r]``;
  as layers, 1x1 ``C_in -> R`` (``B^T``), depthwise ``kh x 1`` (``Y``), depthwise ``1 x kw``
  (``X``), 1x1 ``R -> C_out`` (``A``, the bias). Computed by alternating least squares
  (ALS) from an SVD start.

Rank selection per mode: explicit, by energy (fraction of the unfolding's squared singular
values kept), or by analytic empirical VBMF (Nakajima et al. 2013), which estimates the
noise level of the unfolding and keeps the components above the resulting threshold, as
Kim et al. do on the mode-0 and mode-1 unfoldings.

All of it is written here in torch (float64 internally) rather than taken from tensorly:
the functions are short, deterministic given the kernel (no global backend state, no
random start except where a CP rank exceeds a mode's dimension, drawn from a seeded
generator), and slimkit then needs no extra dependency for these kinds. See docs/lowrank.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch

Kernel = torch.Tensor  # [C_out, C_in, kh, kw]


def unfold(w: Kernel, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: ``[w.shape[mode], prod(other dims)]``."""
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def singular_values(w: Kernel, mode: int) -> torch.Tensor:
    """Singular values of the mode-``mode`` unfolding, descending (float64)."""
    return torch.linalg.svdvals(unfold(w.double(), mode))


# -- rank selection ---------------------------------------------------------------------------
def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` whose first ``r`` singular values hold ``energy`` of ``sum(s**2)`` (``s`` descending)."""
    e = s.double() ** 2
    total = float(e.sum())
    if total <= 0:
        return 1
    cum = torch.cumsum(e, 0) / total  # [n]
    return min(int((cum < energy - 1e-12).sum()) + 1, len(s))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """Nakajima's ``tau(x)``: the posterior signal-to-noise of a component with ``x = s^2 / (M sigma^2)``."""
    return 0.5 * (x - (1 + alpha) + np.sqrt(np.maximum((x - (1 + alpha)) ** 2 - 4 * alpha, 0.0)))


def _evb_objective(sigma2: float, L: int, M: int, s: np.ndarray, residual: float, xubar: float) -> float:
    """Negative free energy of empirical VBMF as a function of the noise variance (Nakajima 2013, eq. 18)."""
    H = len(s)
    alpha = L / M
    x = s ** 2 / (M * sigma2)
    z1, z2 = x[x > xubar], x[x <= xubar]
    tau_z1 = _tau(z1, alpha)
    term1 = np.sum(z2 - np.log(z2))
    term2 = np.sum(z1 - tau_z1)
    term3 = np.sum(np.log((tau_z1 + 1) / z1))
    term4 = alpha * np.sum(np.log(tau_z1 / alpha + 1))
    return float(term1 + term2 + term3 + term4 + residual / (M * sigma2) + (L - H) * np.log(sigma2))


def vbmf_rank(y: torch.Tensor) -> int:
    """Rank of matrix ``y`` estimated by analytic empirical VBMF (noise variance estimated too).

    The EVB solution keeps exactly the singular values above ``sqrt(M sigma^2 (1 + tau)(1 +
    alpha / tau))`` with ``tau = 2.5129 sqrt(alpha)``; ``sigma^2`` minimizes the free energy on
    the interval Nakajima et al. derive. At least 1.
    """
    from scipy.optimize import minimize_scalar

    m = y.double()
    if m.shape[0] > m.shape[1]:
        m = m.T
    L, M = m.shape  # L <= M
    s = torch.linalg.svdvals(m).numpy()  # [L], descending
    if L < 2 or not np.all(np.isfinite(s)) or s[0] <= 0:
        return 1
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    s = np.maximum(s, s[0] * 1e-12)  # an exactly zero singular value would put log(0) in the objective
    eh_ub = max(min(int(math.ceil(L / (1 + alpha))) - 1, L) - 1, 0)
    upper = float(np.sum(s ** 2)) / (L * M)
    lower = max(s[min(eh_ub + 1, L - 1)] ** 2 / (M * xubar), float(np.mean(s[eh_ub + 1:] ** 2)) / M
                if eh_ub + 1 < L else 0.0)
    lower = max(lower, upper * 1e-12)
    if lower >= upper:
        sigma2 = upper
    else:
        res = minimize_scalar(_evb_objective, args=(L, M, s, 0.0, xubar), bounds=(lower, upper), method="bounded")
        sigma2 = float(res.x)
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return max(int(np.sum(s > threshold)), 1)


def tucker_ranks_for_ratio(c_out: int, c_in: int, kh: int, kw: int, ratio: float) -> tuple[int, int]:
    """Ranks ``(R_out, R_in)``, proportional to ``(C_out, C_in)``, whose Tucker-2 factors hold at most
    ``ratio`` of the dense kernel's weights (at least 1 each)."""
    dense = c_out * c_in * kh * kw
    best = (1, 1)
    for r_out in range(1, c_out + 1):
        r_in = max(1, round(r_out * c_in / c_out))
        if c_in * r_in + r_in * r_out * kh * kw + r_out * c_out > ratio * dense:
            break
        best = (r_out, min(r_in, c_in))
    return best


def cp_rank_for_ratio(c_out: int, c_in: int, kh: int, kw: int, ratio: float) -> int:
    """Largest CP rank whose four factors hold at most ``ratio`` of the dense kernel's weights (>= 1)."""
    return max(1, int(ratio * c_out * c_in * kh * kw // (c_in + kh + kw + c_out)))


# -- Tucker-2 ---------------------------------------------------------------------------------
def _leading(m: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``m`` (``[m.shape[0], r]``), sign fixed so the
    largest-magnitude entry of each is positive (SVD signs are otherwise arbitrary).

    Eigenvectors of the small Gram matrix ``m m^T`` (float64): the unfoldings are wide (``C x C'k^2``),
    and this is several times faster than an SVD of ``m`` itself."""
    u = torch.linalg.eigh(m @ m.T)[1].flip(1)[:, :r]  # eigenvalues ascending -> leading first
    idx = u.abs().argmax(dim=0)  # [r]
    sign = torch.sign(u[idx, torch.arange(u.shape[1])])
    return u * torch.where(sign == 0, torch.ones_like(sign), sign)


def tucker2(w: Kernel, r_out: int, r_in: int, *, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 of ``w`` on its channel modes: ``(core [R_out, R_in, kh, kw], U_out [C_out, R_out], U_in [C_in, R_in])``.

    HOSVD start, then ``iters`` HOOI sweeps (each mode's factor = leading singular vectors of
    the kernel projected on the other mode's factor), which can only lower the error.
    Returned in ``w``'s dtype.
    """
    c_out, c_in = w.shape[:2]
    if not (1 <= r_out <= c_out and 1 <= r_in <= c_in):
        raise ValueError(f"Tucker ranks ({r_out}, {r_in}) must be in [1, {c_out}] x [1, {c_in}]")
    x = w.double()
    u_out, u_in = _leading(unfold(x, 0), r_out), _leading(unfold(x, 1), r_in)
    for _ in range(iters):
        y = torch.einsum("oiyx,ir->oryx", x, u_in)  # [C_out, R_in, kh, kw]
        u_out = _leading(unfold(y, 0), r_out)
        y = torch.einsum("oiyx,or->riyx", x, u_out)  # [R_out, C_in, kh, kw]
        u_in = _leading(unfold(y, 1), r_in)
    core = torch.einsum("oiyx,or,is->rsyx", x, u_out, u_in)  # [R_out, R_in, kh, kw]
    return core.to(w.dtype), u_out.to(w.dtype), u_in.to(w.dtype)


def tucker2_full(core: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor) -> Kernel:
    """The kernel the factors represent: ``core x_0 U_out x_1 U_in`` (``[C_out, C_in, kh, kw]``)."""
    return torch.einsum("rsyx,or,is->oiyx", core, u_out, u_in)


# -- CP ---------------------------------------------------------------------------------------
def cp_als(w: Kernel, rank: int, *, iters: int = 200, tol: float = 1e-7, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` CP of ``w`` by ALS: ``(A [C_out, R], B [C_in, R], Y [kh, R], X [kw, R])``.

    Start: each factor's leading left singular vectors of its unfolding, columns beyond
    the mode's dimension drawn from ``N(0, 1)`` under ``seed`` (as tensorly's ``init='svd'``).
    Each sweep solves every factor in closed form given the others (a small ridge keeps the
    Gram matrices invertible); B, Y, X are kept unit-norm and A carries the scale. Stops after
    ``iters`` sweeps or when the relative error improves by less than ``tol``.
    """
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    x = w.double()
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for mode in range(4):
        m = unfold(x, mode)
        k = min(rank, m.shape[0])
        f = torch.linalg.svd(m, full_matrices=False)[0][:, :k]
        if k < rank:
            f = torch.cat([f, torch.randn(m.shape[0], rank - k, generator=gen, dtype=torch.float64)], 1)
        factors.append(f)
    a, b, y, xx = factors
    norm = float(x.norm()) or 1.0
    prev = math.inf
    eye = torch.eye(rank, dtype=torch.float64)

    def solve(rhs: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:  # rhs [n, R] @ gram^-1
        ridge = 1e-10 * float(gram.diagonal().mean().clamp_min(1e-30))
        return torch.linalg.solve(gram + ridge * eye, rhs.T).T

    for _ in range(iters):
        b = solve(torch.einsum("oiyx,or,yr,xr->ir", x, a, y, xx), (a.T @ a) * (y.T @ y) * (xx.T @ xx))
        b = b / b.norm(dim=0).clamp_min(1e-30)
        y = solve(torch.einsum("oiyx,or,ir,xr->yr", x, a, b, xx), (a.T @ a) * (b.T @ b) * (xx.T @ xx))
        y = y / y.norm(dim=0).clamp_min(1e-30)
        xx = solve(torch.einsum("oiyx,or,ir,yr->xr", x, a, b, y), (a.T @ a) * (b.T @ b) * (y.T @ y))
        xx = xx / xx.norm(dim=0).clamp_min(1e-30)
        m_a = torch.einsum("oiyx,ir,yr,xr->or", x, b, y, xx)  # [C_out, R]
        gram = (b.T @ b) * (y.T @ y) * (xx.T @ xx)  # [R, R]
        a = solve(m_a, gram)
        # ||x - xhat||^2 = ||x||^2 - 2 <x, xhat> + ||xhat||^2, without building xhat
        sq = norm ** 2 - 2 * float((a * m_a).sum()) + float(((a.T @ a) * gram).sum())
        err = math.sqrt(max(sq, 0.0)) / norm
        if prev - err < tol:
            break
        prev = err
    return tuple(t.to(w.dtype) for t in (a, b, y, xx))  # type: ignore[return-value]


def cp_full(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> Kernel:
    """The kernel a CP represents: ``sum_r A[o,r] B[i,r] Y[y,r] X[x,r]`` (``[C_out, C_in, kh, kw]``)."""
    return torch.einsum("or,ir,yr,xr->oiyx", a, b, y, x)


def relative_error(w: Kernel, approx: Kernel) -> float:
    """``||w - approx|| / ||w||`` (Frobenius)."""
    w, approx = w.detach().double(), approx.detach().double()
    return float((w - approx).norm() / w.norm().clamp_min(1e-30))


__all__ = ["cp_als", "cp_full", "cp_rank_for_ratio", "energy_rank", "relative_error", "singular_values",
           "tucker2", "tucker2_full", "tucker_ranks_for_ratio", "unfold", "vbmf_rank"]
