"""Weight tying inside a Linear: ``share.hashed``, ``share.circulant``, ``share.toeplitz``.

Each targeted ``nn.Linear`` is replaced by a layer of :mod:`.structured_layers` whose
small weight vector is the least-squares projection of the dense weight (:func:`.tying.project`),
so the layer starts as close to the original as the structure allows; recovery is a later
recipe step (fine-tuning or distillation). Every replacement goes through the gate
(:mod:`slimkit.lowrank.gate`): ``gate: latency`` times it against the dense layer on the
serving runtime and keeps the dense layer where the structured one is slower, which on a
CPU is the usual verdict (docs/sharing.md has the measured ratios); ``gate: params``
keeps it where it is ``gate_min_ratio`` times smaller.

The Record lists the replaced layers with their structure (shape, bias, block, or size and
hash seed) and every gate decision; replay rebuilds exactly those layers, then the weights
load strictly.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..lowrank.gate import GateOptions
from ..lowrank.linear_swap import int_at, like, replace_linears, replay_linears
from .structured_layers import CirculantLinear, HashedLinear, ToeplitzLinear
from .tying import project


@method_config
class HashedShare(GateOptions):
    """HashedNets (Chen et al. 2015): each Linear's weights read a small vector through a fixed hash with signs.

    ``ratio`` of the virtual weights are stored (``size`` overrides it with an absolute count
    per layer); buckets and signs come from ``seed`` (layer ``k`` of the targets uses
    ``seed + k``). Saves bytes, not time: the forward materializes the dense matrix.
    """

    kind = "share.hashed"
    stage = "shrink"
    ratio: float = 0.125
    size: int | None = None
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        self._require(0 < self.ratio <= 1, "ratio", "a float in (0, 1]", self.ratio)
        self._require(self.size is None or self.size >= 1, "size", "an int >= 1 or null", self.size)


@method_config
class CirculantShare(GateOptions):
    """Block-circulant Linear (CirCNN): ``block x block`` circulant blocks, product by FFT (O(n log n)).

    ``product: fft`` is the rfft/irfft product (exports through ``torch.export``, not through
    slimkit's TorchScript ONNX exporter); ``product: dense`` materializes the blocks and runs
    a GEMM (exports anywhere, no faster than the dense layer).
    """

    kind = "share.circulant"
    stage = "shrink"
    block: int = 64
    product: Literal["fft", "dense"] = "fft"

    def validate(self) -> None:
        super().validate()
        self._require(self.block >= 2, "block", "an int >= 2", self.block)


@method_config
class ToeplitzShare(GateOptions):
    """Block-Toeplitz Linear: ``2*block - 1`` parameters per ``block x block`` block.

    ``product: dense`` (default: measured faster than the FFT on CPU, docs/sharing.md)
    materializes the blocks and runs a GEMM; ``product: fft`` embeds each block in a
    circulant of size ``2*block``.
    """

    kind = "share.toeplitz"
    stage = "shrink"
    block: int = 64
    product: Literal["fft", "dense"] = "dense"

    def validate(self) -> None:
        super().validate()
        self._require(self.block >= 2, "block", "an int >= 2", self.block)


def _check_runtime(config: GateOptions, product: str) -> None:
    """An FFT layer cannot be gated on ONNX Runtime: say so before any work is done."""
    if config.gate == "latency" and config.gate_runtime == "onnx" and product == "fft":
        raise MethodError(f"{config.kind} with product: fft cannot be timed on gate_runtime: onnx: slimkit's ONNX "
                          "exporter (TorchScript, opset 17) has no conversion for aten::fft_rfft in this torch; "
                          "use gate_runtime: pt2 or eager, or product: dense")


def _fill(layer: nn.Module, dense: nn.Linear, signed: bool) -> nn.Module:
    """Project ``dense``'s weight onto ``layer``'s structure and copy the bias."""
    with torch.no_grad():
        n = layer.weight.numel()
        layer.weight.copy_(project(dense.weight, layer.index, n, signed=signed))  # type: ignore[arg-type]
        if dense.bias is not None:
            layer.bias.copy_(dense.bias)  # type: ignore[union-attr]
    return layer


@register_method(HashedShare)
def hashed_share(model: nn.Module, config: HashedShare, targets: Targets, ctx: Context) -> Record:
    def build(dense: nn.Linear, k: int) -> tuple[nn.Module, dict[str, Any]]:
        total = dense.in_features * dense.out_features
        size = min(total, config.size if config.size is not None else max(1, round(config.ratio * total)))
        layer = HashedLinear(dense.in_features, dense.out_features, size, config.seed + k, dense.bias is not None,
                             **like(dense))
        return _fill(layer, dense, signed=True), {"size": size, "seed": config.seed + k}

    return replace_linears(model, config, targets, ctx, build)


@register_method(CirculantShare)
def circulant_share(model: nn.Module, config: CirculantShare, targets: Targets, ctx: Context) -> Record:
    _check_runtime(config, config.product)

    def build(dense: nn.Linear, k: int) -> tuple[nn.Module, dict[str, Any]]:
        layer = CirculantLinear(dense.in_features, dense.out_features, config.block, config.product,
                                dense.bias is not None, **like(dense))
        return _fill(layer, dense, signed=False), {"block": config.block, "product": config.product}

    return replace_linears(model, config, targets, ctx, build)


@register_method(ToeplitzShare)
def toeplitz_share(model: nn.Module, config: ToeplitzShare, targets: Targets, ctx: Context) -> Record:
    _check_runtime(config, config.product)

    def build(dense: nn.Linear, k: int) -> tuple[nn.Module, dict[str, Any]]:
        layer = ToeplitzLinear(dense.in_features, dense.out_features, config.block, config.product,
                               dense.bias is not None, **like(dense))
        return _fill(layer, dense, signed=False), {"block": config.block, "product": config.product}

    return replace_linears(model, config, targets, ctx, build)


# -- replay: rebuild the kept layers from the Record alone ------------------------------------------------
def _product(spec: dict[str, Any], where: str) -> Any:
    if spec.get("product") not in ("fft", "dense"):
        raise ValueError(f"{where}: 'product' must be fft or dense, got {spec.get('product')!r}")
    return spec["product"]


@register_replay(HashedShare)
def replay_hashed(model: nn.Module, record: Record) -> None:
    def make(spec: dict[str, Any], n_in: int, n_out: int, bias: bool, like: dict[str, Any]) -> nn.Module:
        seed = spec.get("seed")
        if type(seed) is not int:
            raise ValueError(f"share.hashed: 'seed' must be an int, got {seed!r}")
        size = int_at(spec.get("size"), "share.hashed size")
        if size > n_in * n_out:
            raise ValueError(f"share.hashed: size {size} exceeds the layer's {n_in * n_out} weights")
        return HashedLinear(n_in, n_out, size, seed, bias, **like)

    replay_linears(model, record, make)


@register_replay(CirculantShare)
def replay_circulant(model: nn.Module, record: Record) -> None:
    replay_linears(model, record, lambda spec, n_in, n_out, bias, like: CirculantLinear(
        n_in, n_out, int_at(spec.get("block"), "share.circulant block", 2), _product(spec, "share.circulant"),
        bias, **like))


@register_replay(ToeplitzShare)
def replay_toeplitz(model: nn.Module, record: Record) -> None:
    replay_linears(model, record, lambda spec, n_in, n_out, bias, like: ToeplitzLinear(
        n_in, n_out, int_at(spec.get("block"), "share.toeplitz block", 2), _product(spec, "share.toeplitz"),
        bias, **like))


__all__ = ["CirculantShare", "HashedShare", "ToeplitzShare"]
