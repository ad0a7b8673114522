"""Unstructured magnitude pruning (Han et al. 2015): zero the smallest weights.

Scopes (See et al. 2016 naming): ``layer`` (every tensor to the same sparsity),
``global`` / class-blind (one threshold over all), ``class-uniform`` (every weight class
to the same sparsity, one threshold per class) and ``class-distribution`` (prune
``|w| < lambda * sigma_c`` per class c). Weight classes come from
:func:`slimkit.prune.sparsity.weight_class`: embeddings, attention projections, FFN
weights, else the module type; ``classes`` overrides it with name patterns.

Sparsity alone does not make dense kernels faster; what it buys is storage, which the
size account and ``slimkit.save`` realise with relative-index CSR
(:mod:`slimkit.core.encoding`). Structured pruning (``prune.channel`` and friends)
is what makes models faster.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from ..core.targets import check_patterns
from .masks import global_topk_masks, sparsity_of, topk_mask
from .recurrent import is_recurrent_bias, is_recurrent_weight
from .sparsity import class_distribution_masks, class_uniform_masks, weight_class


@method_config
class MagnitudePrune(MethodConfig):
    """Zero the smallest-magnitude weights, per layer or with one global threshold."""

    kind = "prune.magnitude"
    stage = "sparsify"

    sparsity: float = 0.5
    scope: Literal["layer", "global", "class-uniform", "class-distribution"] = "layer"
    include_bias: bool = False
    # Weight classes for the class-* scopes: class name -> module-name patterns (fnmatch or "re:").
    classes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # class-distribution only: prune |w| < threshold_lambda * sigma_class instead of solving
    # lambda for ``sparsity``.
    threshold_lambda: float | None = None

    def validate(self) -> None:
        self._require(0.0 <= self.sparsity < 1.0, "sparsity", "a float in [0, 1)", self.sparsity)
        self._require(self.threshold_lambda is None or self.threshold_lambda >= 0.0, "threshold_lambda",
                      "a non-negative float or null", self.threshold_lambda)
        self._require(self.threshold_lambda is None or self.scope == "class-distribution", "threshold_lambda",
                      "null unless scope is 'class-distribution'", self.threshold_lambda)
        for cls_name, patterns in self.classes.items():
            check_patterns(patterns, f"classes.{cls_name}")


def param_classes(model: nn.Module, names: list[str], classes: dict[str, tuple[str, ...]]) -> list[str]:
    """Weight class of each qualified parameter name (the class of its owning module)."""
    modules = dict(model.named_modules())
    out = []
    for qual in names:
        owner = qual.rsplit(".", 1)[0] if "." in qual else ""
        out.append(weight_class(owner, type(modules[owner]).__name__, classes))
    return out


def prunable_params(model: nn.Module, targets: Targets, include_bias: bool) -> list[tuple[str, nn.Parameter]]:
    """``(qualified_name, param)`` for the weight matrices/kernels of the targeted modules.

    Weights need at least 2 dims (norm scales are left alone); biases only on request.
    Recurrent layers hold several weight matrices (``weight_ih_lK`` / ``weight_hh_lK``, and
    ``_reverse``), all of which count as weights.
    Shared parameters appear once.
    """
    out: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name, module in targets.iter(model):
        for pname, p in module.named_parameters(recurse=False):
            wanted = ((pname == "weight" and p.dim() >= 2) or is_recurrent_weight(module, pname)
                      or (include_bias and (pname == "bias" or is_recurrent_bias(module, pname))))
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
    extra: dict[str, object] = {}
    if config.scope == "global":
        masks = global_topk_masks(scores, config.sparsity)
    elif config.scope in ("class-uniform", "class-distribution"):
        labels = param_classes(model, [n for n, _ in params], config.classes)
        extra["classes"] = dict(zip((n for n, _ in params), labels))
        if config.scope == "class-uniform":
            masks = class_uniform_masks(scores, labels, config.sparsity)
        else:
            sparsity = None if config.threshold_lambda is not None else config.sparsity
            masks, lam = class_distribution_masks([p for _, p in params], labels, sparsity, config.threshold_lambda)
            extra["lambda"] = lam
    else:
        masks = [topk_mask(s, config.sparsity) for s in scores]
    layers = {}
    with torch.no_grad():
        for (name, p), mask in zip(params, masks):
            p.mul_(mask.to(p.dtype))
            layers[name] = {"sparsity": round(sparsity_of(p), 6), "numel": p.numel()}
    total = sum(p.numel() for _, p in params)
    zeros = sum(p.numel() - int(torch.count_nonzero(p)) for _, p in params)
    return Record(kind=config.kind, data={"params": layers, **extra},
                  summary={"sparsity": zeros / total, "numel": total})
