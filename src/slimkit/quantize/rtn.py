"""Round-to-nearest (RTN) weight quantisation of a 2-D weight, the baseline GPTQ / AWQ improve on.

Every weight-only quantiser in slimkit returns the same triple for a weight ``W [N, K]``
(``N`` output rows, ``K`` input columns):

* ``codes [N, K]`` int32 in ``qrange(bits, symmetric)`` (signed narrow range when
  symmetric, ``[0, 2**bits - 1]`` otherwise);
* ``scales [N, G]`` float32, one per row and group of ``K // G`` consecutive columns
  (``G = 1`` is per output channel);
* ``zeros [N, G]`` int32 zero points (all 0 when symmetric).

so ``W ~ (codes - zeros) * scales`` with scales repeated over each group
(:func:`dequantize_weight`). Conv kernels are flattened to ``[O, I * kh * kw]`` first.
"""
from __future__ import annotations

import torch

from ..core.errors import ConfigError
from .granularity import QParams, per_channel, per_group

QTriple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_group(k: int, group_size: int | None) -> int:
    """Number of groups per row; ``group_size`` must divide the row length ``k``."""
    if group_size is None:
        return 1
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"expected a positive int or null, got {group_size!r}", key="group_size")
    if k % group_size:
        raise ConfigError(f"group_size {group_size} does not divide the row length {k}", key="group_size")
    return k // group_size


def rtn_params(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> QParams:
    """Min-max parameters of ``w [N, K]`` per output row (``group_size=None``) or per row group."""
    if w.dim() != 2:
        raise ConfigError(f"expected a 2-D weight [N, K], got shape {tuple(w.shape)}", key="w")
    check_group(w.shape[1], group_size)
    if group_size is None:
        return per_channel(w, axis=0, bits=bits, symmetric=symmetric)  # scale [N, 1]
    return per_group(w, group_size, axis=-1, bits=bits, symmetric=symmetric)  # scale [N, G]


def rtn_quantize(w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True) -> QTriple:
    """``(codes, scales, zeros)`` of ``w [N, K]`` by rounding each weight to its nearest grid point."""
    qp = rtn_params(w.detach().float(), bits, group_size, symmetric)
    codes = qp.quantize(w.detach().float())  # [N, K] int32
    return codes, qp.scale.float(), qp.zero_point.to(torch.int32)


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Float weight ``[N, K]`` of a ``(codes, scales, zeros)`` triple."""
    k = codes.shape[1]
    g = scales.shape[1]
    s = scales.float().repeat_interleave(k // g, dim=1)  # [N, K]
    z = zeros.float().repeat_interleave(k // g, dim=1)  # [N, K]
    return (codes.float() - z) * s


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Mean squared error of the layer outputs ``x @ w.T`` vs ``x @ w_hat.T`` (x: [M, K])."""
    return float(((x @ (w - w_hat).T) ** 2).mean())
