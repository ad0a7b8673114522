"""Non-uniform quantisers as methods: ``quantize.balanced``, ``quantize.pow2``, ``quantize.residual_binary``.

Each targeted Linear / Conv2d is quantised once, from its trained weights (data-free, no
fine-tuning), with one of the quantisers of :mod:`slimkit.quantize.nonuniform`, and becomes a
:class:`~slimkit.quantize.packed.PackedLayer`: ``bits``-bit codes stored packed, plus a
small codebook of the levels. All three are codebook layers, so the same replay
(:func:`~slimkit.quantize.packed.replay_packed`) rebuilds them on ``restore``:

* ``quantize.balanced`` (Zhou et al. 2017): ``2**bits`` levels, each used by the same
  number of weights (equal-frequency bins, level = mean of its bin). Every code is equally
  likely, so the codes carry the full ``bits`` of information (Huffman cannot shrink them).
* ``quantize.pow2`` (Miyashita et al. 2016, INQ): levels ``{0, +-2**e}``; one bit holds
  the sign and ``bits - 1`` bits the exponent or zero, so a multiply by a weight is a
  shift on hardware that has one. Exact zeros (pruned weights) stay zero
  (``storage: sparse`` then stores only the non-zero codes).
* ``quantize.residual_binary`` (Guo et al. 2017 greedy, Xu et al. 2018 alternating):
  ``w ~ sum_{i<bits} alpha_i * b_i`` with ``b_i in {-1, +1}``; the ``bits`` sign bits of a
  weight form its code and the ``2**bits`` sums ``sum_i +-alpha_i`` the codebook (per
  output channel with ``per_channel``).

The record's summary reports ``bits``, the stored bytes (``code_bytes``,
``bits_per_weight``) and ``weight_rel_error``, ``||W - Q(W)||^2 / ||W||^2`` over all
quantised weights: these quantisers are not trained, so this is their whole effect.
"""
from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from .nonuniform import equal_frequency_bins, log2_dequantize, log2_quantize, residual_binary
from .packed import PackedLayer, Storage, layers_of, op_of, packed_record, replay_packed

DEFAULT_TARGETS = Targets(types=("Conv2d", "Linear"))


# ---------------------------------------------------------------- codes + codebook per weight (pure)


def balanced_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-frequency codes: ``(codes int64 like w in [0, 2**bits), codebook [1, 2**bits])``."""
    codebook, idx = equal_frequency_bins(w, bits)
    return idx, codebook.reshape(1, -1)


def pow2_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Power-of-two codes: ``(codes int64 like w, codebook [1, 2**bits], zero_code)``.

    :func:`log2_quantize`'s signed codes ``c in [-n, n]`` (``n = 2**(bits-1) - 1``) are stored
    as ``c + n`` in ``[0, 2**bits - 2]``; the top code is unused (level 0) and ``n`` is zero.
    """
    q = log2_quantize(w, bits)
    n = 2 ** (bits - 1) - 1
    signed = torch.arange(-n, n + 2, dtype=torch.int64)  # [2**bits]: every stored code minus n
    levels = log2_dequantize(signed, q.e_min)  # [2**bits]
    levels[-1] = 0.0  # code 2n + 1 is never written
    return q.codes.to(torch.int64) + n, levels.reshape(1, -1), n


def residual_codes(w: torch.Tensor, bits: int, mode: Literal["greedy", "alternating"], per_channel: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual-binary codes: ``(codes int64 like w in [0, 2**bits), codebook [G, 2**bits])``.

    Bit ``i`` of a weight's code is 1 where ``b_i = +1``; codebook entry ``p`` is
    ``sum_i alpha_i * (+1 if bit i of p else -1)``, so ``codebook[code]`` is exactly
    :func:`~slimkit.quantize.nonuniform.residual_dequantize`. ``G`` is 1 or the output channels.
    """
    axis = 0 if per_channel else None
    scales, signs = residual_binary(w, bits, mode=mode, axis=axis)  # [k] or [C, k]; [k, *w.shape]
    place = (2 ** torch.arange(bits, dtype=torch.int64)).reshape(-1, *([1] * w.dim()))  # [k, 1, ...]
    codes = ((signs.to(torch.int64) > 0).to(torch.int64) * place).sum(dim=0)  # like w
    patterns = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)), dtype=torch.float32)  # [2^k, k]
    patterns = patterns.flip(1)  # row p: bit i of p (LSB = column 0) -> +1 / -1
    codebook = scales.reshape(-1, bits).float() @ patterns.T  # [G, 2^k]
    return codes, codebook


# ---------------------------------------------------------------- configs


def _select(model: nn.Module, targets: Targets) -> list[tuple[str, nn.Module]]:
    if not targets.types:
        targets = Targets(include=targets.include, exclude=targets.exclude, types=DEFAULT_TARGETS.types)
    return layers_of(model, targets)


@method_config
class BalancedQuant(MethodConfig):
    """Balanced (equal-frequency) codebook quantisation of weights, data-free, stored bit-packed."""

    kind = "quantize.balanced"
    stage = "quantize"

    bits: int = 4
    storage: Literal["packed", "huffman", "auto"] = "packed"

    def validate(self) -> None:
        self._require(1 <= self.bits <= 8, "bits", "an int in [1, 8]", self.bits)


@method_config
class Pow2Quant(MethodConfig):
    """Power-of-two weights {0, +-2**e} (sign + exponent codes), data-free, stored bit-packed."""

    kind = "quantize.pow2"
    stage = "quantize"

    bits: int = 4
    storage: Literal["packed", "huffman", "sparse", "auto"] = "packed"

    def validate(self) -> None:
        self._require(2 <= self.bits <= 8, "bits", "an int in [2, 8] (one sign bit plus exponents)", self.bits)


@method_config
class ResidualBinaryQuant(MethodConfig):
    """Residual binary weights sum_i alpha_i * b_i (``bits`` sign planes), data-free, stored bit-packed."""

    kind = "quantize.residual_binary"
    stage = "quantize"

    bits: int = 2
    mode: Literal["greedy", "alternating"] = "alternating"
    per_channel: bool = True
    storage: Literal["packed", "huffman", "auto"] = "packed"

    def validate(self) -> None:
        self._require(1 <= self.bits <= 8, "bits", "an int in [1, 8]", self.bits)


# ---------------------------------------------------------------- handlers


def _convert(model: nn.Module, targets: Targets, bits: int, storage: Storage, make: Any
             ) -> tuple[dict[str, PackedLayer], float]:
    """Swap every selected layer for the PackedLayer of ``make(weight) -> (codes, codebook,
    zero_code)``; returns the layers and ``||W - Q(W)||^2 / ||W||^2`` over all of them."""
    packed: dict[str, PackedLayer] = {}
    err = norm = 0.0
    for name, module in _select(model, targets):
        w = module.weight.detach().float().cpu()  # codes are packed on the CPU
        codes, codebook, zero_code = make(w)
        bias = module.bias.detach() if module.bias is not None else None
        layer = PackedLayer.from_codes(op_of(module), codes, bits, bias=None if bias is None else bias.cpu(),
                                       codebook=codebook, storage=storage, zero_code=zero_code)
        err += float((layer.weight_float() - w).pow(2).sum())
        norm += float(w.pow(2).sum())
        packed[name] = layer.to(module.weight.device)
        swap_module(model, name, packed[name])
    return packed, err / norm if norm > 0 else 0.0


def _record(packed: dict[str, PackedLayer], rel_error: float, **summary: Any) -> Record:
    return packed_record(packed, weight_rel_error=round(rel_error, 6),
                         storage={n: m.meta["storage"] for n, m in packed.items()}, **summary)


@register_method(BalancedQuant)
def balanced(model: nn.Module, config: BalancedQuant, targets: Targets, ctx: Context) -> Record:
    packed, rel = _convert(model, targets, config.bits, config.storage, lambda w: (*balanced_codes(w, config.bits), None))
    return _record(packed, rel, bits=config.bits)


@register_method(Pow2Quant)
def pow2(model: nn.Module, config: Pow2Quant, targets: Targets, ctx: Context) -> Record:
    packed, rel = _convert(model, targets, config.bits, config.storage, lambda w: pow2_codes(w, config.bits))
    zeros = sum(int((m.codes() == m.meta["zero_code"]).sum()) for m in packed.values())
    numel = sum(m.codes().numel() for m in packed.values())
    return _record(packed, rel, bits=config.bits, zero_fraction=round(zeros / max(1, numel), 4))


@register_method(ResidualBinaryQuant)
def residual(model: nn.Module, config: ResidualBinaryQuant, targets: Targets, ctx: Context) -> Record:
    packed, rel = _convert(model, targets, config.bits, config.storage,
                           lambda w: (*residual_codes(w, config.bits, config.mode, config.per_channel), None))
    return _record(packed, rel, bits=config.bits, mode=config.mode)


register_replay(BalancedQuant)(replay_packed)
register_replay(Pow2Quant)(replay_packed)
register_replay(ResidualBinaryQuant)(replay_packed)

__all__ = ["BalancedQuant", "Pow2Quant", "ResidualBinaryQuant", "balanced_codes", "pow2_codes", "residual_codes"]
