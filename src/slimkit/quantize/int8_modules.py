"""Int8 Linear / Conv2d modules that run PyTorch's x86 (fbgemm/oneDNN) int8 kernels.

``torch.ao``'s quantized modules keep their weights in an opaque packed object
(``_packed_params``) that does not go through ``state_dict`` as plain tensors, so slimkit's
safetensors artifact could not hold them. These modules store what defines them as
ordinary buffers instead, and pack lazily on first use:

- ``weight_int8`` ``[O, I]`` / ``[O, I/g, kh, kw]`` int8, symmetric (zero point 0), codes in
  ``[-qmax, qmax]``: 127 where the CPU's int8 dot product accumulates in int32 (VNNI), 63 where
  it adds pairs of products into int16 and would saturate (:mod:`slimkit.core.cpu`);
- ``weight_scale`` ``[O]`` float32 (per-channel) or ``[1]`` (per-tensor, expanded);
- ``bias`` ``[O]`` float32 (zeros when the float layer had none);
- static only: ``act_qparams`` = ``[in_scale, in_zero_point, out_scale, out_zero_point]``
  float32 from calibration (uint8 activations).

``Int8Linear(mode="dynamic")`` quantizes each input on the fly (per-tensor uint8 range of
that very call) and runs ``quantized::linear_dynamic``; ``mode="static"`` uses the
calibrated ranges with ``quantized::linear``. ``Int8Conv2d`` is static only
(``quantized::conv2d``). Static modules quantize and dequantize at their boundary, so
each is a drop-in replacement; chaining int8 tensors between layers is what the ONNX
Runtime path (QDQ fusion) does.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core.cpu import weight_qmax

Mode = Literal["dynamic", "static"]


def quantize_weight(w: torch.Tensor, per_channel: bool, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes in ``[-qmax, qmax]`` and scales of a weight: ``[O, ...] -> (int8 [O, ...], scale [O])``."""
    if not 1 <= qmax <= 127:
        raise ValueError(f"qmax must be in [1, 127], got {qmax}")
    rows = w.detach().float().reshape(w.shape[0], -1)  # [O, K]
    amax = rows.abs().amax(dim=1) if per_channel else rows.abs().amax().expand(w.shape[0])  # [O]
    scale = torch.clamp(amax / float(qmax), min=1e-12)  # [O]
    codes = torch.clamp(torch.round(rows / scale[:, None]), -qmax, qmax).to(torch.int8)  # [O, K]
    return codes.reshape(w.shape), scale.contiguous()


def _qweight(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The torch per-channel quantized weight tensor the prepack ops take."""
    zp = torch.zeros(scale.shape[0], dtype=torch.int64)
    return torch._make_per_channel_quantized_tensor(codes, scale.double(), zp, 0)


def static_padding_of(conv: nn.Conv2d) -> tuple[int, int, int, int] | None:
    """The explicit zero padding a Conv2d subclass applies before convolving, or None for plain Conv2d.

    Only the pattern of TF-"same" ports is understood (a ``static_padding`` child that is
    ``ZeroPad2d`` or ``Identity``); any other subclass could do anything in ``forward`` and
    is refused rather than silently replaced.
    """
    if type(conv) is nn.Conv2d:
        return None
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        return tuple(int(p) for p in pad.padding)  # type: ignore[return-value]
    if isinstance(pad, nn.Identity) or (type(pad).__name__ == "Identity" and not list(pad.parameters())):
        return (0, 0, 0, 0)  # nn.Identity or a port's own parameterless Identity
    raise ValueError(f"{type(conv).__name__} is a Conv2d subclass with its own forward; only plain Conv2d and "
                     "static-same-padding convs can be replaced by Int8Conv2d")


class _Int8Base(nn.Module):
    """Shared buffers, lazy packing and pickling (packed params are not deep-copyable)."""

    def __init__(self, weight_shape: tuple[int, ...], mode: Mode) -> None:
        super().__init__()
        if mode not in ("dynamic", "static"):
            raise ValueError(f"mode must be 'dynamic' or 'static', got {mode!r}")
        self.mode = mode
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0]))
        self.register_buffer("bias", torch.zeros(weight_shape[0]))
        if mode == "static":
            self.register_buffer("act_qparams", torch.tensor([1.0, 0.0, 1.0, 0.0]))
        self._packed: Any = None

    def set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None, per_channel: bool,
                   qmax: int | None = None) -> None:
        """Quantize ``weight``; ``qmax`` None = what this CPU's int8 kernels take exactly (127 or 63)."""
        codes, scale = quantize_weight(weight, per_channel, weight_qmax() if qmax is None else qmax)
        self.weight_int8.copy_(codes)
        self.weight_scale.copy_(scale)
        self.bias.copy_(bias.detach().float() if bias is not None else torch.zeros_like(self.bias))
        self._packed = None

    def set_act_ranges(self, in_scale: float, in_zp: int, out_scale: float, out_zp: int) -> None:
        self.act_qparams.copy_(torch.tensor([in_scale, float(in_zp), out_scale, float(out_zp)]))

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int8.dim() - 1)
        return self.weight_int8.float() * self.weight_scale.reshape(shape)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float32 weight, recomputed on each read; read-only (assigning raises).

        For parents that read a child's ``.weight`` instead of only calling it:
        ``nn.MultiheadAttention`` passes ``out_proj.weight`` / ``.bias`` to its functional
        kernel, HF ViT / CLIP / DINOv2 patch embeddings read the projection's
        ``weight.dtype``. They keep working and compute with the int8 values (in float, so
        that use gets the int8 rounding but not the int8 kernel).
        """
        return self.dequantized_weight()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # new weights: repack on next call

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def packed(self) -> Any:
        if self._packed is None:
            self._packed = self._pack(_qweight(self.weight_int8, self.weight_scale.float()))
        return self._packed

    def _pack(self, qw: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _quant_in(self, x: torch.Tensor) -> torch.Tensor:
        s, zp = float(self.act_qparams[0]), int(self.act_qparams[1])
        return torch.quantize_per_tensor(x.float().contiguous(), s, zp, torch.quint8)


class Int8Linear(_Int8Base):
    """``y = x W^T + b`` with int8 weights on torch's x86 int8 GEMM; ``x`` is ``[..., I]``."""

    def __init__(self, in_features: int, out_features: int, mode: Mode = "dynamic") -> None:
        super().__init__((out_features, in_features), mode)
        self.in_features, self.out_features = in_features, out_features

    @classmethod
    def from_float(cls, lin: nn.Linear, mode: Mode = "dynamic", per_channel: bool = True,
                   qmax: int | None = None) -> Int8Linear:
        m = cls(lin.in_features, lin.out_features, mode)
        m.set_weight(lin.weight, lin.bias, per_channel, qmax)
        return m

    def _pack(self, qw: torch.Tensor) -> Any:
        return torch.ops.quantized.linear_prepack(qw, self.bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.mode == "dynamic":
            # reduce_range=False: full 8-bit activations (7-bit activations lose much of the
            # embedding fidelity int8 keeps; measured: docs/quantization.md#int8-on-cpus-with-and-without-vnni).
            # Pre-VNNI kernels are kept exact by 7-bit *weight* codes instead (set_weight),
            # which cost less accuracy there.
            return torch.ops.quantized.linear_dynamic(x.float(), self.packed(), False).to(dtype)  # [..., O]
        qy = torch.ops.quantized.linear(self._quant_in(x), self.packed(), float(self.act_qparams[2]),
                                        int(self.act_qparams[3]))
        return qy.dequantize().to(dtype)  # [..., O]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


class Int8Conv2d(_Int8Base):
    """Static int8 2-D convolution on torch's x86 int8 kernel (``quantized::conv2d``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], groups: int,
                 pre_pad: tuple[int, int, int, int] | None = None) -> None:
        super().__init__((out_channels, in_channels // groups, *kernel_size), "static")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        # explicit (left, right, top, bottom) zero padding before the conv ("same" padding of TF ports)
        self.pre_pad = tuple(pre_pad) if pre_pad is not None else None

    @classmethod
    def from_float(cls, conv: nn.Conv2d, per_channel: bool = True, qmax: int | None = None) -> Int8Conv2d:
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError(f"Int8Conv2d needs numeric zero padding, got {conv.padding!r} / {conv.padding_mode}")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                conv.dilation, conv.groups, pre_pad=static_padding_of(conv))
        m.set_weight(conv.weight, conv.bias, per_channel, qmax)
        return m

    def _pack(self, qw: torch.Tensor) -> Any:
        return torch.ops.quantized.conv2d_prepack(qw, self.bias.float(), list(self.stride), list(self.padding),
                                                  list(self.dilation), self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.pre_pad is not None:
            x = nn.functional.pad(x, self.pre_pad)  # [B, C, H + t + b, W + l + r]
        qy = torch.ops.quantized.conv2d(self._quant_in(x), self.packed(), float(self.act_qparams[2]),
                                        int(self.act_qparams[3]))  # [B, O, H', W'] quint8
        return qy.dequantize().to(dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}")
