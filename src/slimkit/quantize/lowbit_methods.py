"""Binary and ternary weights as trainable methods: ``quantize.binary`` and ``quantize.ternary``.

Both keep a latent float weight that the optimiser updates, use the quantised weight in
the forward pass, and pass gradients straight through (STE), as in the papers:

* ``quantize.binary`` - BinaryConnect (``sign(w)``), BWN (``mean|w| * sign(w)``, per tensor
  or per output channel) and XNOR (per-filter scale plus inputs binarised to
  ``sign(x - m) * mean_c|x - m| + m``, ``m`` the sample's mean input). The sign uses the hard-tanh STE (:func:`sign_ste`).
* ``quantize.ternary`` - TWN (threshold ``0.7 mean|w|``, scale = mean of the kept ``|w|``,
  identity STE) and TTQ (threshold ``t * max|w|`` and two *learned* scales ``Wp``/``Wn``,
  :class:`~slimkit.quantize.lowbit.TTQ`).

After training each layer becomes a :class:`~slimkit.quantize.packed.PackedLayer`: binary
codes at 1 bit per weight with a ``[G, 2]`` codebook ``(-alpha, +alpha)``; ternary codes at
2 bits (``{-1, 0, 1}`` offset to ``{0, 1, 2}``) with per-tensor/-channel ``alpha`` (TWN) or
the codebook ``(-Wn, 0, Wp)`` (TTQ). XNOR layers keep binarising their input when converted.

XNOR-Net assumes *signed* inputs (it orders its blocks BN -> binarise -> conv). After a ReLU
(``conv -> BN -> ReLU -> conv`` in ``zoo:digits-cnn``) every input is >= 0 and plain
``sign(x)`` is constant and carries no signal (measured: docs/quantization.md#low-bit-and-weight-sharing-size),
so slimkit binarises each
sample's input around its mean (see :func:`slimkit.quantize.packed.xnor_input`).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from .lowbit import TTQ, BinaryMode, binarize, sign_ste, ternarize_twn
from .packed import (
    PackedLayer,
    Storage,
    layers_of,
    op_of,
    packed_record,
    replay_packed,
    run_op,
    xnor_input,
)
from .qat import DEFAULT_TARGETS, train_and_convert


class _LatentLayer(nn.Module):
    """Latent float weight + bias of a Linear / Conv2d; subclasses say how the weight is quantised."""

    def __init__(self, module: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        self.op = op_of(module)
        self.weight = nn.Parameter(module.weight.detach().clone())
        self.bias = nn.Parameter(module.bias.detach().clone()) if module.bias is not None else None

    def quant_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_op(self.op, self.quant_input(x), self.quant_weight(), self.bias)

    def _bias(self) -> torch.Tensor | None:
        return self.bias.detach() if self.bias is not None else None


class BinaryLayer(_LatentLayer):
    """``alpha * sign(w)`` in the forward, hard-tanh STE to the latent weight."""

    def __init__(self, module: nn.Linear | nn.Conv2d, mode: BinaryMode, per_channel: bool) -> None:
        super().__init__(module)
        self.mode = mode
        self.axis: int | None = 0 if (per_channel or mode == "xnor") else None

    def _alpha(self) -> torch.Tensor:
        _, alpha = binarize(self.weight.detach(), self.mode, self.axis)
        return alpha.to(self.weight.dtype)

    def quant_weight(self) -> torch.Tensor:
        w = self.weight
        # BinaryConnect weights are +-1: clip the STE at 1; scaled modes clip at the scale's range.
        clip = 1.0 if self.mode == "binaryconnect" else float(w.detach().abs().max())
        return self._alpha() * sign_ste(w, clip=clip)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return xnor_input(x) if self.mode == "xnor" else x

    def convert(self, storage: Storage = "packed") -> PackedLayer:
        w = self.weight.detach()
        codes = (w >= 0).to(torch.int64)  # sign(0) = +1
        alpha = self._alpha().reshape(-1, 1)  # [G, 1]
        codebook = torch.cat([-alpha, alpha], dim=1).float()  # [G, 2]
        act = {"kind": "xnor"} if self.mode == "xnor" else None
        return PackedLayer.from_codes(self.op, codes, 1, bias=self._bias(), codebook=codebook, storage=storage, act=act)


class TernaryLayer(_LatentLayer):
    """TWN (closed-form threshold and scale) or TTQ (learned ``Wp`` / ``Wn``)."""

    def __init__(self, module: nn.Linear | nn.Conv2d, mode: Literal["twn", "ttq"], per_channel: bool,
                 delta_factor: float, threshold: float) -> None:
        super().__init__(module)
        self.mode = mode
        self.axis: int | None = 0 if per_channel else None
        self.delta_factor = delta_factor
        self.ttq = TTQ(threshold, init=self.weight.detach()) if mode == "ttq" else None

    def quant_weight(self) -> torch.Tensor:
        w = self.weight
        if self.ttq is not None:
            return self.ttq(w)
        codes, alpha = ternarize_twn(w.detach(), self.delta_factor, self.axis)
        t = alpha.to(w.dtype) * codes.to(w.dtype)
        return t + (w - w.detach())  # identity STE

    def convert(self, storage: Storage = "packed") -> PackedLayer:
        w = self.weight.detach()
        if self.ttq is not None:
            codes = self.ttq.codes(w).to(torch.int64) + 1  # {-1, 0, 1} -> {0, 1, 2}
            cb = torch.stack([-self.ttq.wn.detach(), torch.zeros(()), self.ttq.wp.detach()]).reshape(1, 3)
            return PackedLayer.from_codes(self.op, codes, 2, bias=self._bias(), codebook=cb.float(),
                                          storage=storage, zero_code=1)
        codes, alpha = ternarize_twn(w, self.delta_factor, self.axis)
        return PackedLayer.from_codes(self.op, codes.to(torch.int64) + 1, 2, bias=self._bias(),
                                      scale=alpha.reshape(-1).float(), qmin=-1, storage=storage, zero_code=1)


def _select(model: nn.Module, targets: Targets) -> list[tuple[str, nn.Module]]:
    if not targets.types:
        targets = Targets(include=targets.include, exclude=targets.exclude, types=DEFAULT_TARGETS.types)
    return layers_of(model, targets)


def _check_training(cfg: MethodConfig, steps: int, lr: float) -> None:
    cfg._require(steps >= 0, "steps", "a non-negative int", steps)
    cfg._require(lr > 0, "lr", "a positive float", lr)


@method_config
class BinaryQuant(MethodConfig):
    """Binary weights (1 bit): BinaryConnect, BWN or XNOR, trained with the STE, stored bit-packed."""

    kind = "quantize.binary"
    stage = "quantize"

    mode: BinaryMode = "bwn"
    per_channel: bool = False
    steps: int = 300
    lr: float = 1e-3
    storage: Literal["packed", "huffman", "auto"] = "packed"

    def validate(self) -> None:
        _check_training(self, self.steps, self.lr)


@register_method(BinaryQuant)
def binary(model: nn.Module, config: BinaryQuant, targets: Targets, ctx: Context) -> Record:
    layers: dict[str, _LatentLayer] = {}
    for name, module in _select(model, targets):
        layers[name] = BinaryLayer(module, config.mode, config.per_channel)  # type: ignore[arg-type]
        swap_module(model, name, layers[name])
    packed, final_loss = train_and_convert(model, layers, ctx, config.steps, config.lr, config.kind, config.storage)
    return packed_record(packed, bits=1, mode=config.mode, final_loss=final_loss)


@method_config
class TernaryQuant(MethodConfig):
    """Ternary weights {-a, 0, +b} (2-bit codes): TWN or TTQ, trained with the STE, stored bit-packed."""

    kind = "quantize.ternary"
    stage = "quantize"

    mode: Literal["twn", "ttq"] = "twn"
    per_channel: bool = False
    delta_factor: float = 0.7
    threshold: float = 0.05
    steps: int = 300
    lr: float = 1e-3
    storage: Literal["packed", "huffman", "sparse", "auto"] = "packed"

    def validate(self) -> None:
        _check_training(self, self.steps, self.lr)
        self._require(self.delta_factor >= 0, "delta_factor", "a non-negative float", self.delta_factor)
        self._require(0.0 <= self.threshold < 1.0, "threshold", "a float in [0, 1)", self.threshold)
        self._require(not (self.mode == "ttq" and self.per_channel), "per_channel",
                      "false for ttq (one Wp/Wn pair per layer)", self.per_channel)


@register_method(TernaryQuant)
def ternary(model: nn.Module, config: TernaryQuant, targets: Targets, ctx: Context) -> Record:
    layers: dict[str, _LatentLayer] = {}
    for name, module in _select(model, targets):
        layers[name] = TernaryLayer(module, config.mode, config.per_channel,  # type: ignore[arg-type]
                                    config.delta_factor, config.threshold)
        swap_module(model, name, layers[name])
    packed, final_loss = train_and_convert(model, layers, ctx, config.steps, config.lr, config.kind, config.storage)
    zeros = sum(int((m.codes() == m.meta["zero_code"]).sum()) for m in packed.values())
    numel = sum(m.codes().numel() for m in packed.values())
    return packed_record(packed, bits=2, mode=config.mode, zero_fraction=round(zeros / max(1, numel), 4),
                         final_loss=final_loss)


register_replay(BinaryQuant)(replay_packed)
register_replay(TernaryQuant)(replay_packed)

__all__ = ["BinaryQuant", "BinaryLayer", "TernaryQuant", "TernaryLayer"]
