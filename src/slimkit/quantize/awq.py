"""AWQ (Lin et al. 2023): scale salient input channels up before rounding the weight.

A few input channels carry much larger activations than the rest; the rounding error of
the weights they multiply dominates the output error. AWQ multiplies column ``j`` of the
weight by ``s_j`` before quantising and divides the input by ``s_j`` (``W x = (W s)(x /
s)``, exact in float), which shrinks the *relative* rounding error of the salient columns.
``s = mean|x_j| ** alpha`` with ``alpha`` picked on a grid in ``[0, 1]`` to minimise the
layer's output error; ``alpha = 0`` is plain RTN, so the search never does worse than
RTN on the data it searched with.

In slimkit the ``1 / s`` is kept as an explicit per-input-channel multiply in the
quantised module (:class:`~slimkit.quantize.wo_modules.WeightOnlyLinear`'s
``input_scale``) rather than folded into the previous op: folding is only exact when the
previous op is per-channel linear and feeds nothing else, which is not true of post-LN
BERT (the LayerNorm output is also the residual). AWQ's extra weight-clipping search is
not implemented.
"""
from __future__ import annotations

import torch

from ..core.errors import ConfigError
from .rtn import dequantize_weight, rtn_quantize


def normalised_scales(x_absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``x_absmean ** alpha`` divided by the geometric mean of its extremes (keeps ``s`` near 1)."""
    s = x_absmean.float().clamp(min=1e-4) ** alpha  # [K]
    return s / torch.sqrt(s.max() * s.min())


def awq_scales(w: torch.Tensor, x_absmean: torch.Tensor, bits: int, group_size: int | None = None, grid: int = 20,
               *, x: torch.Tensor | None = None, symmetric: bool = False) -> torch.Tensor:
    """Per-input-channel scales ``s [K]`` minimising the output error of quantising ``w * s``.

    ``x [M, K]`` (calibration inputs) gives the exact output MSE; without it the error is
    the diagonal proxy ``sum_j mean|x_j|^2 * ||dW[:, j]||^2``. ``alpha`` takes the
    ``grid + 1`` values ``0, 1/grid, ..., 1``.
    """
    if w.dim() != 2 or x_absmean.shape != (w.shape[1],):
        raise ConfigError(f"expected w [N, K] and x_absmean [K]; got {tuple(w.shape)} and "
                          f"{tuple(x_absmean.shape)}", key="x_absmean")
    if grid < 1:
        raise ConfigError(f"expected a positive int, got {grid!r}", key="grid")
    w = w.detach().float()
    xs = None if x is None else x.detach().reshape(-1, w.shape[1]).float()  # [M, K]
    weight = x_absmean.float() ** 2  # [K] diagonal proxy weights
    best_err, best_s = float("inf"), torch.ones(w.shape[1])
    for i in range(grid + 1):
        s = normalised_scales(x_absmean, i / grid)  # [K]
        w_hat = dequantize_weight(*rtn_quantize(w * s, bits, group_size, symmetric)) / s  # [N, K]
        dw = w - w_hat
        err = float(((xs @ dw.T) ** 2).mean()) if xs is not None else float((weight * (dw**2).sum(0)).sum())
        if err < best_err:
            best_err, best_s = err, s
    return best_s
