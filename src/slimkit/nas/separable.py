"""``block.depthwise_separable``: replace standard Conv2d layers by depthwise-separable pairs.

Each targeted ``nn.Conv2d`` (groups 1, kernel larger than 1x1) becomes ``nn.Sequential(
depthwise, pointwise)``: a ``C_in -> C_in*m`` depthwise conv (groups ``C_in``) that keeps the
layer's stride, padding, dilation and padding mode, then a 1x1 ``C_in*m -> C_out`` conv that
carries the bias -- MobileNet's block, with ``m`` the depth multiplier. Both are plain
``nn.Conv2d``, so :func:`slimkit.measure.profile`, quantization, ONNX / PT2 export and
save/restore see ordinary convs.

The weights start from the best separable fit of the original kernel
(:func:`.separable_math.separable_factors`: a truncated SVD per input channel, exact when
the layer already is separable); distilling afterwards (``distill.logits`` in a recipe)
recovers what the fit lost. The :mod:`slimkit.lowrank.gate` options apply: ``gate:
latency`` keeps a converted layer only where it is measured faster on the serving runtime,
``gate: params`` only where it is smaller by ``gate_min_ratio``.

Layers that are not converted, with the reason in the Record's ``data["skipped"]``: grouped
or depthwise convs, transposed convs, 1x1 convs (nothing spatial to separate), subclasses of
Conv2d (fake-quant wrappers carry state a plain pair would drop) and layers whose pair would
not hold fewer weights. Naming one of them explicitly in ``targets.include`` is a
:class:`MethodError` naming the layer, as is a target set that selects no conv at all.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from ..lowrank.gate import GateOptions, gate_and_swap, n_params, summarize
from .separable_math import relative_error, separable_factors, separable_kernel


@method_config
class DepthwiseSeparableBlock(GateOptions):
    """Conv2d -> depthwise (k x k, depth multiplier ``multiplier``) + pointwise 1x1, fitted by per-channel SVD.

    ``multiplier``: depthwise channels per input channel (MobileNet's depth multiplier);
    capped per layer at ``min(C_out, kh*kw)``, where the fit is already exact. Layers whose
    pair would not hold fewer weights than the kernel are skipped. Gate options as in the
    low-rank kinds (``gate: latency | params | none``).
    """

    kind = "block.depthwise_separable"
    stage = "shrink"
    multiplier: int = 1

    def validate(self) -> None:
        super().validate()
        self._require(self.multiplier >= 1, "multiplier", "an int >= 1", self.multiplier)


# -- which convs ---------------------------------------------------------------------------------
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def unsupported(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot be made depthwise-separable (None when it can)."""
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return f"transposed conv ({type(conv).__name__}) is not supported"
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    if conv.groups != 1:
        return f"grouped conv (groups={conv.groups}) is already channel-separated"
    if tuple(conv.kernel_size) == (1, 1):
        return "1x1 conv: no spatial kernel to separate from the channel mixing"
    return None


def effective_multiplier(conv: nn.Conv2d, multiplier: int) -> int:
    """The multiplier actually used: above ``min(C_out, kh*kw)`` the fit is exact already."""
    c_out, _, kh, kw = conv.weight.shape
    return min(multiplier, c_out, kh * kw)


def pair_weights(conv: nn.Conv2d, m: int) -> int:
    """Weights (no bias) of the depthwise + pointwise pair replacing ``conv`` at multiplier ``m``."""
    c_out, c_in, kh, kw = conv.weight.shape
    return c_in * m * (kh * kw + c_out)


def separable_pair(conv: nn.Conv2d, m: int, fit: bool = True) -> nn.Sequential:
    """``nn.Sequential(depthwise, pointwise)`` replacing ``conv`` at multiplier ``m``.

    ``fit``: initialise from the SVD fit of ``conv``'s kernel and copy its bias; ``False``
    builds the structure only (replay: the saved weights load afterwards).
    """
    c_out, c_in, kh, kw = conv.weight.shape
    like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    depthwise = nn.Conv2d(c_in, c_in * m, (kh, kw), stride=conv.stride, padding=conv.padding,
                          dilation=conv.dilation, groups=c_in, bias=False, padding_mode=conv.padding_mode, **like)
    pointwise = nn.Conv2d(c_in * m, c_out, 1, bias=conv.bias is not None, **like)
    if fit:
        dw, pw = separable_factors(conv.weight.detach(), m)  # [C_in*m, 1, kh, kw], [C_out, C_in*m, 1, 1]
        with torch.no_grad():
            depthwise.weight.copy_(dw)
            pointwise.weight.copy_(pw)
            if conv.bias is not None:
                pointwise.bias.copy_(conv.bias)
    return nn.Sequential(depthwise, pointwise).train(conv.training)


def _named_explicitly(targets: Targets, name: str) -> bool:
    return any(p == name for p in targets.include if not p.startswith("re:") and not set(p) & set("*?["))


# -- the handler ---------------------------------------------------------------------------------
@register_method(DepthwiseSeparableBlock)
def depthwise_separable(model: nn.Module, config: DepthwiseSeparableBlock, targets: Targets, ctx: Context) -> Record:
    """Fit, gate and swap every targeted Conv2d. The Record's ``layers`` (what replay rebuilds)
    hold each kept layer's multiplier and the fit's relative kernel error."""
    candidates: list[tuple[str, nn.Conv2d]] = []
    skipped: dict[str, str] = {}
    for name, module in targets.select(model):
        if not isinstance(module, _CONV_TYPES):
            continue
        reason = unsupported(module)
        conv = cast(nn.Conv2d, module)
        if reason is None:
            m = effective_multiplier(conv, config.multiplier)
            if pair_weights(conv, m) >= conv.weight.numel():
                reason = (f"the separable pair (multiplier {m}) would hold {pair_weights(conv, m)} weights, "
                          f"not fewer than the kernel's {conv.weight.numel()}")
        if reason is not None:
            if _named_explicitly(targets, name):
                raise MethodError(f"{config.kind} cannot convert {name!r}: {reason}")
            skipped[name] = reason
            continue
        candidates.append((name, conv))
    if not candidates and not skipped:
        raise MethodError(f"{config.kind}: the targets select no Conv2d")
    before = n_params(model)
    plans = {name: effective_multiplier(conv, config.multiplier) for name, conv in candidates}
    kept, decisions = gate_and_swap(model, candidates, lambda _k, name, conv: separable_pair(conv, plans[name]),
                                    ctx, config)
    dense = dict(candidates)
    layers: dict[str, dict[str, Any]] = {}
    for name, pair in kept.items():
        c_in = dense[name].in_channels
        err = relative_error(dense[name].weight, separable_kernel(pair[0].weight, pair[1].weight, c_in))
        layers[name] = {"multiplier": plans[name], "error": round(err, 6)}
    return Record(kind="", data={"multiplier": config.multiplier, "layers": layers, "skipped": skipped,
                                 "gate": [d.to_dict() for d in decisions]},
                  summary={"params_before": before, "params_after": n_params(model), **summarize(decisions),
                           "layers_skipped": len(skipped)})


@register_replay(DepthwiseSeparableBlock)
def replay_depthwise_separable(model: nn.Module, record: Record) -> None:
    """Swap in empty separable pairs at the recorded multipliers (the weights load afterwards)."""
    layers = record.data.get("layers")
    if not isinstance(layers, dict):
        raise MethodError(f"{record.kind} replay: data['layers'] must be a mapping, got {type(layers).__name__}")
    for name, meta in layers.items():
        if not isinstance(name, str) or not isinstance(meta, dict):
            raise MethodError(f"{record.kind} replay: bad layer entry {name!r}: {meta!r}")
        try:
            conv = model.get_submodule(name)
        except AttributeError as exc:
            raise MethodError(f"{record.kind} replay: the model has no layer {name!r}") from exc
        reason = unsupported(conv)
        if reason is not None:
            raise MethodError(f"{record.kind} replay: {name!r} cannot be rebuilt: {reason}")
        dense = cast(nn.Conv2d, conv)
        m = meta.get("multiplier")
        if type(m) is not int or not 1 <= m <= effective_multiplier(dense, m) \
                or pair_weights(dense, m) >= dense.weight.numel():  # the handler never records more
            raise MethodError(f"{record.kind} replay: {name!r} multiplier {m!r} is not one the handler records")
        swap_module(model, name, separable_pair(dense, m, fit=False))


__all__ = ["DepthwiseSeparableBlock", "effective_multiplier", "pair_weights", "separable_pair", "unsupported"]
