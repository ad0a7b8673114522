"""Modules holding weight-only quantised weights: packed integer codes + scales (+ zero points).

Storage (what ``slimkit.save`` writes; all buffers, so ``restore`` loads them strictly):

* ``qweight``: 8-bit symmetric codes as ``int8 [N, K]`` (the layout of the int8 kernel);
  every other width as ``uint8`` bytes of :func:`~slimkit.quantize.packing.pack_bits`
  over the unsigned codes (symmetric codes offset by ``qmax``), ``ceil(N*K*bits/8)`` bytes;
* ``scales``: ``float32 [N, G]`` (``G = 1`` per output channel, else ``K / group_size``);
* ``zeros``: ``uint8 [N, G]`` zero points when asymmetric, an empty tensor when symmetric;
* ``input_scale``: ``float32 [K]`` multiplier of the input (AWQ's ``1 / s``), or empty.

Compute on CPU (torch 2.13), chosen per layer and reported by ``.kernel``:

* ``"int8pack"``: ``torch._weight_int8pack_mm`` (int8 weights, per-channel scales, float
  activations) for 8-bit symmetric per-channel layers;
* ``"int4pack"``: ``aten._weight_int4pack_mm_for_cpu`` for 4-bit layers with
  ``group_size`` in 32/64/128/256 and ``N % 16 == 0``; its packed layout is built from
  the stored codes at the first forward (it is not a portable format, so it is not saved);
* ``"dequant"``: everything else (other widths, per-channel 4-bit, Conv2d) dequantises
  the weight on every forward: a size win only, and slower than float.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import MethodError
from ..measure.counter import register_mac_formula
from .affine import qrange
from .packing import pack_bits, packed_nbytes, unpack_bits

INT4_GROUPS = (32, 64, 128, 256)


def _int8_macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    a, b = args[0], args[1]  # A [M, K], B [N, K]
    return int(a.shape[0]) * int(a.shape[1]) * int(b.shape[0])


def _int4_macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    a = args[0]  # A [M, K]; out [M, N]
    return int(a.shape[0]) * int(a.shape[1]) * int(out.shape[-1])


register_mac_formula("aten::_weight_int8pack_mm", _int8_macs)
register_mac_formula("aten::_weight_int4pack_mm_for_cpu", _int4_macs)


class PackedWeight(nn.Module):
    """Base of the weight-only modules: the quantised weight ``[N, K]`` and its dequantisation."""

    def __init__(self, rows: int, cols: int, bits: int, group_size: int | None, symmetric: bool,
                 input_scale: bool = False) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise MethodError(f"weight-only storage supports 2..8 bits, got {bits}")
        if group_size is not None and cols % group_size:
            raise MethodError(f"group_size {group_size} does not divide the row length {cols}")
        self.rows, self.cols, self.bits, self.group_size, self.symmetric = rows, cols, bits, group_size, symmetric
        g = 1 if group_size is None else cols // group_size
        if self.int8_layout:
            self.register_buffer("qweight", torch.zeros(rows, cols, dtype=torch.int8))
        else:
            self.register_buffer("qweight", torch.zeros(packed_nbytes(rows * cols, bits), dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(rows, g))
        self.register_buffer("zeros", torch.zeros(0 if symmetric else rows, 0 if symmetric else g, dtype=torch.uint8))
        self.register_buffer("input_scale", torch.ones(cols if input_scale else 0))
        self.use_kernel = True  # set False to force the dequantise path (tests compare the two)
        self._int4: tuple[torch.Tensor, torch.Tensor] | None = None
        self._int4_failed = False

    @property
    def int8_layout(self) -> bool:
        return self.bits == 8 and self.symmetric

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    def set_quantized(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> None:
        """Store a ``(codes [N, K], scales [N, G], zeros [N, G])`` triple (see :mod:`.rtn`)."""
        qmin, _ = qrange(self.bits, self.symmetric)
        with torch.no_grad():
            if self.int8_layout:
                self.qweight.copy_(codes.to(torch.int8))
            else:
                self.qweight.copy_(pack_bits((codes - qmin).to(torch.int64), self.bits))
            self.scales.copy_(scales.reshape(self.rows, -1).float())
            if not self.symmetric:
                self.zeros.copy_(zeros.reshape(self.rows, -1).to(torch.uint8))
        self._int4 = None

    def unsigned_codes(self) -> torch.Tensor:
        """Stored codes as non-negative ints ``[N, K]`` (``code - qmin``)."""
        if self.int8_layout:
            return self.qweight.to(torch.int32) + (2 ** (self.bits - 1) - 1)
        return unpack_bits(self.qweight, self.bits, self.rows * self.cols).reshape(self.rows, self.cols).to(torch.int32)

    def _offsets(self) -> torch.Tensor:
        """Unsigned code of real zero per row and group ``[N, G]``."""
        if self.symmetric:
            return torch.full_like(self.scales, float(2 ** (self.bits - 1) - 1))
        return self.zeros.float()

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight ``[N, K]`` the stored codes represent."""
        reps = self.cols // self.n_groups
        if self.int8_layout:
            return self.qweight.float() * self.scales.repeat_interleave(reps, dim=1)
        s = self.scales.repeat_interleave(reps, dim=1)  # [N, K]
        z = self._offsets().repeat_interleave(reps, dim=1)  # [N, K]
        return (self.unsigned_codes().float() - z) * s

    # -- kernels -------------------------------------------------------------------------
    @property
    def kernel(self) -> str:
        """Which compute path ``forward`` takes: ``"int8pack"``, ``"int4pack"`` or ``"dequant"``."""
        if not self.use_kernel or not isinstance(self, WeightOnlyLinear):
            return "dequant"
        if self.int8_layout and self.n_groups == 1:
            return "int8pack"
        if (self.bits == 4 and self.group_size in INT4_GROUPS and self.rows % 16 == 0
                and not self._int4_failed):
            return "int4pack"
        return "dequant"

    def _int4_operands(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Kernel-packed weight and ``scales_and_zeros [G, N, 2]``; kernel computes ``(u - 8) * s + z``."""
        if self._int4 is None and not self._int4_failed:
            try:
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.unsigned_codes(), 1)
                zf = (8.0 - self._offsets()) * self.scales  # [N, G]
                sz = torch.stack([self.scales.T, zf.T], dim=-1).contiguous()  # [G, N, 2]
                self._int4 = (packed, sz)
            except (RuntimeError, AttributeError):  # kernel missing or shape unsupported in this build
                self._int4_failed = True
        return self._int4

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._int4 = None  # new codes: rebuild the kernel layout lazily
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, cols={self.cols}, bits={self.bits}, group_size={self.group_size}, " \
               f"symmetric={self.symmetric}, kernel={self.kernel}"


class WeightOnlyLinear(PackedWeight):
    """``nn.Linear`` with a weight-only quantised weight (same ``bias`` parameter name)."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None = None,
                 symmetric: bool = True, bias: bool = True, input_scale: bool = False) -> None:
        super().__init__(out_features, in_features, bits, group_size, symmetric, input_scale)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., K]
        if self.input_scale.numel():
            x = x * self.input_scale
        kernel = self.kernel if x.dtype == torch.float32 else "dequant"
        if kernel == "dequant":
            return F.linear(x, self.dequantized_weight().to(x.dtype), self.bias)
        x2 = x.reshape(-1, self.in_features).contiguous()  # [M, K]
        if kernel == "int8pack":
            y = torch._weight_int8pack_mm(x2, self.qweight, self.scales.reshape(-1))  # [M, N]
        else:
            ops = self._int4_operands()
            if ops is None:
                return F.linear(x, self.dequantized_weight(), self.bias)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, ops[0], self.group_size, ops[1])  # [M, N]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class WeightOnlyConv2d(PackedWeight):
    """``nn.Conv2d`` whose kernel ``[O, I/groups, kh, kw]`` is stored flattened ``[O, I/groups*kh*kw]``."""

    def __init__(self, conv: nn.Conv2d, bits: int, group_size: int | None = None, symmetric: bool = True) -> None:
        if conv.padding_mode != "zeros":
            raise MethodError(f"weight-only Conv2d supports padding_mode='zeros', got {conv.padding_mode!r}")
        shape = tuple(conv.weight.shape)
        super().__init__(shape[0], int(conv.weight[0].numel()), bits, group_size, symmetric)
        self.kernel_shape = shape
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.bias = nn.Parameter(torch.zeros(shape[0])) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, I, H, W]
        w = self.dequantized_weight().reshape(self.kernel_shape).to(x.dtype)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The float weight of a Linear / Conv2d as ``[N, K]`` (conv kernels flattened per output channel)."""
    return module.weight.detach().float().reshape(module.weight.shape[0], -1)


def packed_module(module: nn.Module, bits: int, group_size: int | None, symmetric: bool,
                  input_scale: bool = False) -> PackedWeight:
    """An empty packed module with the structure of ``module`` (a Linear or Conv2d)."""
    if isinstance(module, nn.Linear):
        return WeightOnlyLinear(module.in_features, module.out_features, bits, group_size, symmetric,
                                bias=module.bias is not None, input_scale=input_scale)
    if isinstance(module, nn.Conv2d):
        if input_scale:
            raise MethodError("an input scale (AWQ) is only supported for Linear layers")
        return WeightOnlyConv2d(module, bits, group_size, symmetric)
    raise MethodError(f"weight-only quantisation supports Linear and Conv2d, got {type(module).__name__}")


def stored_nbytes(module: PackedWeight) -> int:
    """Bytes of the quantised weight as saved: codes + scales + zeros + input scale (bias excluded)."""
    return sum(b.numel() * b.element_size() for b in (module.qweight, module.scales, module.zeros,
                                                          module.input_scale))

