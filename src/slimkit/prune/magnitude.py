"""Unstructured magnitude pruning (Han et al. 2015): zero the smallest weights.

Sparsity alone does not make dense kernels faster; what it buys is storage, which the
size account and ``slimkit.save`` realise with relative-index CSR
(:mod:`slimkit.core.encoding`). Structured pruning (``prune.channel`` and friends)
is what makes models faster.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from .masks import global_topk_masks, sparsity_of, topk_mask


@method_config
class MagnitudePrune(MethodConfig):
    """Zero the smallest-magnitude weights, per layer or with one global threshold."""

    kind = "prune.magnitude"
    stage = "sparsify"

    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    include_bias: bool = False

    def validate(self) -> None:
        self._require(0.0 <= self.sparsity < 1.0, "sparsity", "a float in [0, 1)", self.sparsity)


def prunable_params(model: nn.Module, targets: Targets, include_bias: bool) -> list[tuple[str, nn.Parameter]]:
    """``(qualified_name, param)`` for the weight matrices/kernels of the targeted modules.

    Weights need at least 2 dims (norm scales are left alone); biases only on request.
    Shared parameters appear once.
    """
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name, module in targets.iter(model):
        for pname, p in module.named_parameters(recurse=False):
            wanted = (pname == "weight" and p.dim() >= 2) or (include_bias and pname == "bias")
            if wanted and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{name}.{pname}" if name else pname, p))
    return out


@register_method(MagnitudePrune)
def magnitude_prune(model: nn.Module, config: MagnitudePrune, targets: Targets, ctx: Context) -> Record:
    params = prunable_params(model, targets, config.include_bias)
    if not params:
        raise MethodError(f"{config.kind}: the targets select no weight to prune ({targets.to_dict()})")
    scores = [p.detach().abs() for _, p in params]
    if config.scope == "global":
        masks = global_topk_masks(scores, config.sparsity)
    else:
        masks = [topk_mask(s, config.sparsity) for s in scores]
    layers = {}
    with torch.no_grad():
        for (name, p), mask in zip(params, masks):
            p.mul_(mask.to(p.dtype))
            layers[name] = {"sparsity": round(sparsity_of(p), 6), "numel": p.numel()}
    total = sum(p.numel() for _, p in params)
    zeros = sum(p.numel() - int(torch.count_nonzero(p)) for _, p in params)
    return Record(kind=config.kind, data={"params": layers}, summary={"sparsity": zeros / total, "numel": total})
