"""The least-squares depthwise-separable factorization of a conv kernel (pure tensor math).

A depthwise-separable conv with depth multiplier ``m`` (depthwise ``C_in -> C_in*m``, groups
``C_in``, then a 1x1 ``C_in*m -> C_out``) computes the kernel

    W[o, i] = sum_j P[o, i*m + j] * D[i*m + j]        (W[o, i], D[c]: [kh, kw])

so its kernels are exactly those whose slice ``W[:, i]`` reshaped ``[C_out, kh*kw]`` has
rank <= m for every input channel i. The slices are independent, so by Eckart-Young the
truncated SVD of each slice is the best such kernel in Frobenius norm: nothing trained from
a random start can begin closer to the original layer.
"""
from __future__ import annotations

import torch


def separable_factors(w: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(depthwise, pointwise)`` weights of the best rank-``multiplier`` separable fit of ``w``.

    ``w``: ``[C_out, C_in, kh, kw]``. Returns depthwise ``[C_in*m, 1, kh, kw]`` and pointwise
    ``[C_out, C_in*m, 1, 1]`` (the layouts of ``nn.Conv2d(groups=C_in)`` and a 1x1 conv) with
    ``m = multiplier``; a multiplier above ``min(C_out, kh*kw)`` pads with zero channels. The
    singular value is split as its square root on both sides (balanced scales), and each
    singular pair's sign is fixed (the depthwise kernel's largest entry is positive) so the
    result does not depend on the LAPACK build.
    """
    if w.dim() != 4:
        raise ValueError(f"expected a [C_out, C_in, kh, kw] kernel, got shape {tuple(w.shape)}")
    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    c_out, c_in, kh, kw = w.shape
    m = multiplier
    slices = w.detach().to(torch.float64).permute(1, 0, 2, 3).reshape(c_in, c_out, kh * kw)  # [C_in, C_out, k*k]
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)  # [C_in, C_out, r], [C_in, r], [C_in, r, k*k]
    r = min(m, s.shape[1])
    u, s, vh = u[:, :, :r], s[:, :r], vh[:, :r, :]
    # sign: largest-magnitude entry of each depthwise kernel positive
    idx = vh.abs().argmax(dim=2, keepdim=True)  # [C_in, r, 1]
    sign = torch.sign(torch.gather(vh, 2, idx)).squeeze(2)  # [C_in, r]
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    root = s.sqrt() * sign  # [C_in, r]: sign^2 = 1, so dw * pw still multiplies to u s v^T
    dw = torch.zeros(c_in, m, kh * kw, dtype=torch.float64)
    pw = torch.zeros(c_out, c_in, m, dtype=torch.float64)
    dw[:, :r] = vh * root.unsqueeze(2)  # [C_in, r, k*k]
    pw[:, :, :r] = (u * root.unsqueeze(1)).permute(1, 0, 2)  # [C_in, C_out, r] -> [C_out, C_in, r]
    depthwise = dw.reshape(c_in * m, 1, kh, kw).to(w.dtype)
    pointwise = pw.reshape(c_out, c_in * m, 1, 1).to(w.dtype)
    return depthwise, pointwise


def separable_kernel(depthwise: torch.Tensor, pointwise: torch.Tensor, c_in: int) -> torch.Tensor:
    """The ``[C_out, C_in, kh, kw]`` kernel a depthwise (``[C_in*m, 1, kh, kw]``) + pointwise
    (``[C_out, C_in*m, 1, 1]``) pair computes."""
    cm_, _, kh, kw = depthwise.shape
    c_out, m = pointwise.shape[0], cm_ // c_in
    p = pointwise.reshape(c_out, c_in, m, 1)  # [C_out, C_in, m, 1]
    d = depthwise.reshape(1, c_in, m, kh * kw)  # [1, C_in, m, k*k]
    return (p * d).sum(2).reshape(c_out, c_in, kh, kw)


def relative_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    """``||w - approx||_F / ||w||_F`` (0 for an all-zero ``w`` reproduced exactly)."""
    num = (w.detach().double() - approx.detach().double()).norm()
    den = w.detach().double().norm()
    return float(num / den) if den > 0 else float(num)


__all__ = ["relative_error", "separable_factors", "separable_kernel"]
