"""Granularity of quantisation parameters: one scale per tensor, per channel or per group.

Finer granularity costs more stored scales (see :mod:`slimkit.quantize.storage`) but
isolates outlier channels / groups so they do not coarsen everyone else's grid; at 4 bits
and below per-group (e.g. 128 consecutive input weights, as in GPTQ / AWQ) is the norm.

The helpers compute :class:`QParams` for a given tensor with any observer class from
:mod:`slimkit.quantize.observers` (pass ``functools.partial(PercentileObserver, pct=99.9)``
to set its options); ``QParams`` then quantises, dequantises and fake-quantises tensors of
that shape.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..core.errors import ConfigError
from .affine import STE, dequantize, fake_quant, qparams, qrange, quantize
from .observers import MinMaxObserver, Observer

ObserverFactory = Callable[..., Observer]


@dataclasses.dataclass(frozen=True)
class QParams:
    """Affine parameters for one tensor.

    ``scale`` / ``zero_point`` shapes: ``[]`` per tensor; ``x.shape`` with 1 everywhere but
    ``axis`` per channel; ``x.shape`` with dim ``axis`` divided by ``group_size`` per group
    (groups are runs of ``group_size`` consecutive elements along ``axis``).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    axis: int | None = None
    group_size: int | None = None

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    @property
    def n_scales(self) -> int:
        """How many (scale, zero point) pairs must be stored."""
        return self.scale.numel()

    def expanded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` broadcastable against the tensor they were computed for."""
        if self.group_size is None:
            return self.scale, self.zero_point
        assert self.axis is not None
        return (self.scale.repeat_interleave(self.group_size, dim=self.axis),
                self.zero_point.repeat_interleave(self.group_size, dim=self.axis))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        s, z = self.expanded()
        return quantize(x, s, z, self.qmin, self.qmax)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        s, z = self.expanded()
        return dequantize(codes, s, z)

    def fake_quant(self, x: torch.Tensor, ste: STE = "clipped") -> torch.Tensor:
        s, z = self.expanded()
        return fake_quant(x, s, z, self.qmin, self.qmax, ste=ste)


def _axis(x: torch.Tensor, axis: int) -> int:
    if not -x.dim() <= axis < x.dim():
        raise ConfigError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}", key="axis")
    return axis % x.dim()


def _observe(rows_or_x: torch.Tensor, axis: int | None, bits: int, symmetric: bool,
             observer: ObserverFactory) -> tuple[torch.Tensor, torch.Tensor]:
    obs = observer(axis=axis, bits=bits, symmetric=symmetric)
    obs.observe(rows_or_x)
    lo, hi = obs.range()
    return qparams(lo, hi, bits, symmetric)


def per_tensor(x: torch.Tensor, bits: int = 8, symmetric: bool = True,
               observer: ObserverFactory = MinMaxObserver) -> QParams:
    """One scale / zero point for the whole tensor."""
    scale, zp = _observe(x, None, bits, symmetric, observer)
    return QParams(scale, zp, bits, symmetric)


def per_channel(x: torch.Tensor, axis: int = 0, bits: int = 8, symmetric: bool = True,
                observer: ObserverFactory = MinMaxObserver) -> QParams:
    """One scale / zero point per index of ``axis`` (dim 0 = output channels of Linear / Conv)."""
    axis = _axis(x, axis)
    scale, zp = _observe(x, axis, bits, symmetric, observer)  # [C]
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return QParams(scale.reshape(shape), zp.reshape(shape), bits, symmetric, axis=axis)


def per_group(x: torch.Tensor, group_size: int, axis: int = -1, bits: int = 4, symmetric: bool = True,
              observer: ObserverFactory = MinMaxObserver) -> QParams:
    """One scale / zero point per run of ``group_size`` consecutive elements along ``axis``.

    ``axis=-1`` on a Linear weight ``[out, in]`` groups input features within each output
    row. ``group_size`` must divide ``x.shape[axis]``: silently padding a ragged last group
    would change the stored size and the kernel layout, so it is an error instead.
    """
    axis = _axis(x, axis)
    length = x.shape[axis]
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"expected a positive int, got {group_size!r}", key="group_size")
    if length % group_size:
        raise ConfigError(
            f"group_size {group_size} does not divide dim {axis} of size {length} "
            f"(tensor shape {tuple(x.shape)}); pick a divisor of {length}", key="group_size")
    moved = x.detach().movedim(axis, -1)  # [..., L]
    n_groups = length // group_size
    rows = moved.reshape(-1, group_size)  # [R * G, gs]
    scale, zp = _observe(rows, 0, bits, symmetric, observer)  # [R * G]
    out_shape = (*moved.shape[:-1], n_groups)
    scale = scale.reshape(out_shape).movedim(-1, axis)
    zp = zp.reshape(out_shape).movedim(-1, axis)
    return QParams(scale.contiguous(), zp.contiguous(), bits, symmetric, axis=axis, group_size=group_size)
