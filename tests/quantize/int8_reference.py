"""Exact integer references for the int8 kernels: the same codes, accumulated without saturation.

A kernel is right when it equals these up to float rounding of the final scale; an int16
pair saturation (``vpmaddubsw`` on CPUs without VNNI) is off by a large fraction of the
output instead. Accumulation is in float64, exact for these integer sums (< 2**53).
"""
from __future__ import annotations

import torch
from torch import nn

from slimkit.quantize.int8_modules import Int8Conv2d, Int8Linear


def _codes_u8(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """uint8 activation codes minus the zero point, as float64 (exact small integers)."""
    q = torch.quantize_per_tensor(x.float().contiguous(), scale, zp, torch.quint8).int_repr()
    return q.double() - zp


def _requant(y: torch.Tensor, m: Int8Linear | Int8Conv2d) -> torch.Tensor:
    """Static modules quantize their output: the exact float result on the output grid."""
    s, zp = float(m.act_qparams[2]), int(m.act_qparams[3])
    return (torch.clamp(torch.round(y / s) + zp, 0, 255) - zp) * s


def exact_linear(m: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """``Int8Linear(x)`` in exact integer math: ``x`` ``[B, I]`` -> ``[B, O]`` float64."""
    if m.mode == "dynamic":
        scale, zp = torch._choose_qparams_per_tensor(x.float(), False)  # what the dynamic kernel picks
    else:
        scale, zp = float(m.act_qparams[0]), int(m.act_qparams[1])
    acc = _codes_u8(x, scale, zp) @ m.weight_int8.double().T  # [B, O] integer sums
    y = acc * scale * m.weight_scale.double() + m.bias.double()
    return y if m.mode == "dynamic" else _requant(y, m)


def exact_conv(m: Int8Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``Int8Conv2d(x)`` in exact integer math (float64 convolution of the integer codes)."""
    if m.pre_pad is not None:
        x = nn.functional.pad(x, m.pre_pad)
    scale, zp = float(m.act_qparams[0]), int(m.act_qparams[1])
    acc = nn.functional.conv2d(_codes_u8(x, scale, zp), m.weight_int8.double(), None, m.stride, m.padding,
                               m.dilation, m.groups)  # [B, O, H', W'] integer sums
    y = acc * scale * m.weight_scale.double()[None, :, None, None] + m.bias.double()[None, :, None, None]
    return _requant(y, m)


def worst_case_linear(k: int = 64, o: int = 8) -> tuple[nn.Linear, torch.Tensor]:
    """All-equal positive weights (codes qmax) and all-ones inputs (activation codes 255): every
    adjacent pair of products is ``2 * 255 * qmax``, over int16 for 8-bit weight codes."""
    lin = nn.Linear(k, o)
    with torch.no_grad():
        lin.weight.fill_(0.5)
        lin.bias.zero_()
    return lin, torch.ones(4, k)
