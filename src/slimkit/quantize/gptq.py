"""GPTQ (Frantar et al. 2022): round weights one input column at a time with error feedback.

For a Linear ``y = W x`` and calibration inputs ``X [M, K]``, GPTQ minimises the output
error ``||W X^T - W_q X^T||^2 = tr(dW H dW^T)`` with ``H = 2 X^T X`` (the layer-wise
Hessian; independent of the output row, so all rows share it). Quantising column ``i``
leaves an error ``e = (w_i - q_i) / [H^-1]_ii`` that the Optimal Brain Surgeon update
pushes onto the not-yet-quantised columns: ``W[:, j] -= e * [H^-1]_ij`` for ``j > i``.
The implementation follows the paper's fast form: the upper Cholesky factor of
``H^-1`` replaces the sequential inverse updates, and columns are processed in blocks
of ``blocksize`` with lazy batched updates of the trailing columns.

Grouped scales are computed from the *updated* weights when a group starts (the
error feedback moves weights, so the range of a group is only known then); with
``act_order`` (columns by decreasing ``diag(H)``) the groups are fixed up front from
the original weights ("static groups") so each stored group stays a run of
consecutive columns, which is what the packed format and kernels assume.
"""
from __future__ import annotations

import torch

from ..core.errors import ConfigError
from .affine import qparams, qrange
from .rtn import QTriple, check_group, rtn_params


def hessian_from_inputs(x: torch.Tensor) -> torch.Tensor:
    """``H = 2 X^T X / M`` of inputs ``x [..., K]`` (the mean over rows keeps ``damp`` scale-free)."""
    x2 = x.detach().reshape(-1, x.shape[-1]).double()  # [M, K]
    return (2.0 / max(1, x2.shape[0]) * (x2.T @ x2)).float()  # [K, K]


class HessianAccumulator:
    """Running ``2 X^T X / M`` over calibration batches (used by forward hooks)."""

    def __init__(self, k: int) -> None:
        self.h = torch.zeros(k, k, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).double()  # [M, K]
        m = x2.shape[0]
        self.h *= self.n / (self.n + m)
        self.h += (2.0 / (self.n + m)) * (x2.T @ x2)
        self.n += m

    def value(self) -> torch.Tensor:
        return self.h.float()


def _minmax(cols: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale [N], zero [N])`` of ``cols [N, g]`` (same rule as :func:`rtn_params`)."""
    scale, zero = qparams(cols.amin(dim=1), cols.amax(dim=1), bits, symmetric)
    return scale, zero.to(torch.int32)


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``."""
    k = h.shape[0]
    lam = damp * float(torch.diag(h).mean())
    hd = h.double() + lam * torch.eye(k, dtype=torch.float64)
    try:
        lower = torch.linalg.cholesky(hd)
    except RuntimeError as exc:  # torch raises _LinAlgError (a RuntimeError) when not positive definite
        raise ConfigError(f"Hessian is not positive definite even with damp={damp}; raise damp", key="damp") from exc
    hinv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(hinv, upper=True).float()  # [K, K]


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int | None = None, *,
                  blocksize: int = 128, damp: float = 0.01, act_order: bool = False,
                  symmetric: bool = False) -> QTriple:
    """``(codes, scales, zeros)`` of ``w [N, K]`` that minimise the output error under Hessian ``h [K, K]``.

    ``damp`` adds ``damp * mean(diag H)`` to the diagonal (numerical safety when inputs
    are rank-deficient). Columns whose input is always zero (``H_ii = 0``) are quantised
    as zeros of their group. ``blocksize`` is rounded to a multiple of ``group_size``.
    """
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ConfigError(f"expected w [N, K] and H [K, K]; got {tuple(w.shape)} and {tuple(h.shape)}", key="h")
    if not 0.0 <= damp < 1.0:
        raise ConfigError(f"expected damp in [0, 1), got {damp!r}", key="damp")
    n, k = w.shape
    n_groups = check_group(k, group_size)
    gs = k if group_size is None else group_size
    qmin, qmax = qrange(bits, symmetric)
    W = w.detach().float().clone()  # [N, K]
    H = h.detach().float().clone()  # [K, K]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    scales = torch.empty(n, n_groups)
    zeros = torch.empty(n, n_groups, dtype=torch.int32)
    static = act_order or group_size is None
    if static:  # parameters of every group from the (dead-zeroed) original weights
        qp = rtn_params(W, bits, group_size, symmetric)
        scales[:] = qp.scale.reshape(n, n_groups)
        zeros[:] = qp.zero_point.reshape(n, n_groups).to(torch.int32)
    W = W[:, perm]
    hinv = _inverse_hessian_factor(H[perm][:, perm], damp)  # [K, K] upper
    codes = torch.empty(n, k, dtype=torch.int32)  # permuted column order
    if not static:
        blocksize = max(gs, (blocksize // gs) * gs)

    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        W1 = W[:, i1:i2].clone()  # [N, B]
        err1 = torch.zeros_like(W1)
        hinv1 = hinv[i1:i2, i1:i2]  # [B, B]
        for i in range(i2 - i1):
            col = i1 + i
            g = int(perm[col]) // gs
            if not static and col % gs == 0:
                scales[:, g], zeros[:, g] = _minmax(W1[:, i:i + gs], bits, symmetric)
            s, z = scales[:, g], zeros[:, g]  # [N]
            q = torch.clamp(torch.round(W1[:, i] / s) + z, qmin, qmax)  # [N]
            codes[:, col] = q.to(torch.int32)
            e = (W1[:, i] - (q - z) * s) / hinv1[i, i]  # [N]
            W1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # lazy batch update of the trailing columns
    return codes[:, torch.argsort(perm)], scales, zeros
