"""Fold BatchNorm into the preceding Conv2d / Linear: ``quantize.fold_bn``.

In eval mode ``BN(conv(x)) = conv'(x)`` with ``w' = w * g`` and ``b' = (b - mean) * g + beta``,
``g = gamma / sqrt(var + eps)`` per output channel. Deployment folds BN before quantising
(the quantised weights are then the ones that run) and the BN tensors, with their
safetensors header entries, leave the file. Zeros in ``w`` stay zero, so it can follow pruning.

Pairs are found by adjacency inside ``nn.Sequential`` containers (a Conv2d directly
followed by a BatchNorm2d, or a Linear by a BatchNorm1d), which covers the usual
``Sequential(conv, bn, act)`` blocks; BN layers elsewhere are left alone and reported.
The BN becomes ``nn.Identity``; the layer gains a bias if it had none.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from ..core import (
    Context,
    MethodConfig,
    MethodError,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from ..core.modules import swap_module

_PAIRS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Linear, nn.BatchNorm1d))


def fold_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer name, bn name)`` of every Conv2d->BatchNorm2d / Linear->BatchNorm1d adjacent in a Sequential."""
    out = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (n1, m1), (n2, m2) in itertools.pairwise(children):
            if any(type(m1) is a and type(m2) is b for a, b in _PAIRS):
                prefix = f"{parent_name}." if parent_name else ""
                out.append((prefix + n1, prefix + n2))
    return out


def fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> None:
    """Fold ``bn``'s eval-mode affine map into ``layer`` in place."""
    if bn.running_mean is None or bn.running_var is None:
        raise MethodError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    with torch.no_grad():
        g = bn.running_var.add(bn.eps).rsqrt()  # [C]
        if bn.affine:
            g = g * bn.weight
        beta = bn.bias if bn.affine else torch.zeros_like(g)
        b = layer.bias if layer.bias is not None else torch.zeros_like(g)
        new_bias = (b - bn.running_mean) * g + beta
        layer.weight.mul_(g.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.clone())
        else:
            layer.bias.copy_(new_bias)


@method_config
class FoldBnQuant(MethodConfig):
    """Fold each BatchNorm into the Conv2d / Linear right before it (eval-mode statistics)."""

    kind = "quantize.fold_bn"
    stage = "shrink"


@register_method(FoldBnQuant)
def fold_bn(model: nn.Module, config: FoldBnQuant, targets: Targets, ctx: Context) -> Record:
    pairs = [(a, b) for a, b in fold_pairs(model) if targets.matches(a, model.get_submodule(a))
             or not targets.types and targets.matches(b, model.get_submodule(b))]
    for layer_name, bn_name in pairs:
        fold_into(model.get_submodule(layer_name), model.get_submodule(bn_name))  # type: ignore[arg-type]
        swap_module(model, bn_name, nn.Identity())
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return Record(kind="", data={"pairs": [list(p) for p in pairs]},
                  summary={"folded": len(pairs), "unfolded_bn": len(left)})


@register_replay(FoldBnQuant)
def replay_fold_bn(model: nn.Module, record: Record) -> None:
    for layer_name, bn_name in record.data["pairs"]:
        layer = model.get_submodule(layer_name)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]))
        swap_module(model, bn_name, nn.Identity())


__all__ = ["FoldBnQuant", "fold_into", "fold_pairs"]
