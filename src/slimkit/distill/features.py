"""Which modules of a student and a teacher are "layers" for intermediate distillation, and
a wrapper that returns their outputs (and their attention projections) next to the model's.

A layer is any module whose output is a feature tensor: by default the elements of the
model's one transformer block list (``encoder.layer.0``, ``encoder.layer.1``, ...), found by
the same search ``prune.layers`` uses; otherwise the modules a :class:`~slimkit.core.Targets`
selects (e.g. ``types: [Conv2d]`` for a CNN's feature maps), in ``named_modules`` order.
Inside a transformer block, the query / key / value projections are found by the names the
head-pruning surgery knows (``query``/``q_proj``/..., ``key``/..., ``value``/...), so
attention maps and MiniLM relations come from the projections' outputs whatever attention
kernel (eager, SDPA) the model runs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import MethodError, Targets
from ..prune.surgery import _HEAD_DIM_ATTRS, _K_NAMES, _NUM_HEADS_ATTRS, _Q_NAMES
from .strategies import FeatureTap

_V_NAMES = ("v_proj", "value", "v_lin", "v")

Features = dict[str, Any]  # per layer: "hidden" [B, T, D] or [B, C, H, W]; with qkv also "q", "k", "v", "heads"


def find_layers(model: nn.Module, targets: Targets, kind: str) -> list[str]:
    """Names of ``model``'s layers: the transformer blocks for default targets, else what ``targets`` select."""
    if targets.include == ("*",) and not targets.types and not targets.exclude:
        from ..prune.layers import find_block_lists

        try:
            (path,) = find_block_lists(model, Targets())
        except MethodError as exc:
            raise MethodError(f"{kind}: cannot find the transformer blocks to match ({exc}); "
                              "select the layers with targets (e.g. types: [Conv2d])") from exc
        return [f"{path}.{i}" for i in range(len(model.get_submodule(path)))]
    names = [n for n, _ in targets.iter(model) if n]
    if not names:
        raise MethodError(f"{kind}: targets {targets.to_dict()} select no module of {type(model).__name__}")
    return names


def _first_child(layer: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """The first submodule of ``layer`` whose own name (last dotted part) is one of ``names``."""
    for name, mod in layer.named_modules():
        if name and name.rpartition(".")[2] in names and isinstance(mod, nn.Linear):
            return name, mod
    return None


def _head_count(parent: nn.Module, q: nn.Linear) -> int | None:
    """Attention heads of the module holding ``q``: its head size divides q's width, else its head count."""
    for attr in _HEAD_DIM_ATTRS:
        d = getattr(parent, attr, None)
        if isinstance(d, int) and d > 0 and q.out_features % d == 0:
            return q.out_features // d
    for attr in _NUM_HEADS_ATTRS:
        h = getattr(parent, attr, None)
        if isinstance(h, int) and h > 0:
            return h
    return None


def qkv_names(model: nn.Module, layer: str, kind: str) -> tuple[list[str], int]:
    """``([query, key, value] module names, attention heads)`` inside transformer block ``layer``."""
    block = model.get_submodule(layer)
    found = [_first_child(block, names) for names in (_Q_NAMES, _K_NAMES, _V_NAMES)]
    if any(f is None for f in found):
        raise MethodError(f"{kind}: layer {layer!r} ({type(block).__name__}) has no separate query / key / value "
                          "Linear projections (named query/key/value, q_proj/k_proj/v_proj, ...); attention "
                          "matches need them")
    (q_name, q), _, _ = found  # type: ignore[misc]
    parent = block.get_submodule(q_name.rpartition(".")[0]) if "." in q_name else block
    heads = _head_count(parent, q)
    if heads is None:
        raise MethodError(f"{kind}: cannot tell the head count of {layer}.{q_name.rpartition('.')[0]}")
    return [f"{layer}.{f[0]}" for f in found if f is not None], heads


class LayerFeatures(nn.Module):
    """``forward(...) -> (model output, [features of each layer])``; the student's keep their graph.

    ``qkv=True`` also captures each layer's query / key / value projections (``[B, T, D]``)
    and its head count, for attention-map and self-attention-relation matches.
    """

    def __init__(self, model: nn.Module, layers: list[str], *, qkv: bool, kind: str) -> None:
        super().__init__()
        self.model, self.layers = model, layers
        self.qkv = {layer: qkv_names(model, layer, kind) for layer in layers} if qkv else {}
        self._names = layers + [n for names, _ in self.qkv.values() for n in names]

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, list[Features]]:
        with FeatureTap(self.model, self._names) as tap:
            out = self.model(*args, **kwargs)
        feats = []
        for layer in self.layers:
            f: Features = {"hidden": _tensor(tap.outputs[layer], layer)}
            if layer in self.qkv:
                (q, k, v), heads = self.qkv[layer]
                f.update(q=tap.outputs[q], k=tap.outputs[k], v=tap.outputs[v], heads=heads)
            feats.append(f)
        return out, feats


def _tensor(x: Any, layer: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise MethodError(f"distill.intermediate: layer {layer!r} returned {type(x).__name__}, not a tensor")
    return x


__all__ = ["Features", "LayerFeatures", "find_layers", "qkv_names"]
