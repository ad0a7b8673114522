"""``block.group_shuffle``: replace a Conv2d by a grouped conv followed by a channel shuffle (ShuffleNet).

A grouped conv with ``g`` groups holds ``1/g`` of the kernel: output channel ``c`` of group
``c // (C_out/g)`` sees only that group's input channels. ShuffleNet follows each grouped
conv with a channel shuffle (:class:`ChannelShuffle`, ``nn.ChannelShuffle``'s order written as
reshape + transpose so it exports to ONNX) so the next grouped layer mixes
information across groups; converting consecutive convs of a trained network this way turns it
into a stack of ShuffleNet-style layers.

Initialisation: the pair ``shuffle(grouped(x))`` computes a dense kernel whose output channel
``p(c) = (c % k) * g + c // k`` (``k = C_out/g``) is grouped channel ``c`` and sees only input
group ``c // k``. For that fixed sparsity pattern the least-squares fit of the original kernel
is the original kernel restricted to the pattern (:func:`group_weights`), so the pair starts as
the original layer with the weights outside the pattern zeroed; the kept share of the kernel's
energy is recorded, and distillation (``distill.logits``) recovers the rest.

Converted: plain ``nn.Conv2d`` with groups 1 whose channel counts divide by ``groups`` (1x1 convs
included: ShuffleNet's pointwise group convs). Skipped with the reason in ``data["skipped"]``:
grouped convs, transposed convs, subclasses, channel counts ``groups`` does not divide; naming
one explicitly is a :class:`MethodError` naming the layer.
"""
from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from ..lowrank.gate import GateOptions, gate_and_swap, n_params, summarize
from .separable import _CONV_TYPES, _named_explicitly


@method_config
class GroupShuffleBlock(GateOptions):
    """Conv2d -> grouped Conv2d (``groups``) + channel shuffle, initialised with the kernel restricted to the groups.

    ``shuffle: false`` leaves out the channel shuffle (a plain grouped conv). Gate options as in
    the low-rank kinds.
    """

    kind = "block.group_shuffle"
    stage = "shrink"
    groups: int = 2
    shuffle: bool = True

    def validate(self) -> None:
        super().validate()
        self._require(self.groups >= 2, "groups", "an int >= 2", self.groups)


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle, ``[N, g*k, H, W] -> [N, k*g, H, W]`` (the order of ``nn.ChannelShuffle``).

    Written as reshape + transpose because ONNX has no ``channel_shuffle`` op (``nn.ChannelShuffle``
    does not export); moves data, no MACs.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, *spatial]
        n, c = x.shape[0], x.shape[1]
        return x.reshape(n, self.groups, c // self.groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def shuffled_position(c_out: int, groups: int) -> torch.Tensor:
    """``p[c]``: where ``nn.ChannelShuffle(groups)`` puts grouped output channel ``c`` (``[C_out]``)."""
    k = c_out // groups
    c = torch.arange(c_out)
    return (c % k) * groups + c // k


def group_weights(w: torch.Tensor, groups: int, shuffle: bool) -> torch.Tensor:
    """The grouped kernel ``[C_out, C_in/g, kh, kw]`` closest to ``w`` (``[C_out, C_in, kh, kw]``):
    grouped channel ``c`` takes row ``p[c]`` (``c`` without shuffle) of ``w`` on input group ``c // k``."""
    c_out, c_in, _, _ = w.shape
    k, n = c_out // groups, c_in // groups
    rows = shuffled_position(c_out, groups) if shuffle else torch.arange(c_out)
    out = torch.empty(c_out, n, *w.shape[2:], dtype=w.dtype, device=w.device)
    for c in range(c_out):
        grp = c // k
        out[c] = w[rows[c], grp * n:(grp + 1) * n]
    return out


def unsupported(conv: nn.Module, groups: int) -> str | None:
    """Why ``conv`` cannot become a ``groups``-group conv (None when it can)."""
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        return f"transposed conv ({type(conv).__name__}) is not supported"
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    if conv.groups != 1:
        return f"already a grouped conv (groups={conv.groups})"
    if conv.in_channels % groups or conv.out_channels % groups:
        return f"{conv.in_channels} -> {conv.out_channels} channels do not divide into {groups} groups"
    return None


def grouped_block(conv: nn.Conv2d, groups: int, shuffle: bool, fit: bool = True) -> nn.Sequential:
    """``Sequential(grouped conv[, ChannelShuffle])`` replacing ``conv``; ``fit=False``: structure only."""
    grouped = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                        padding=conv.padding, dilation=conv.dilation, groups=groups, bias=conv.bias is not None,
                        padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    if fit:
        rows = shuffled_position(conv.out_channels, groups) if shuffle else torch.arange(conv.out_channels)
        with torch.no_grad():
            grouped.weight.copy_(group_weights(conv.weight.detach(), groups, shuffle))
            if conv.bias is not None:
                grouped.bias.copy_(conv.bias[rows])
    layers: list[nn.Module] = [grouped] + ([ChannelShuffle(groups)] if shuffle else [])
    return nn.Sequential(*layers).train(conv.training)


@register_method(GroupShuffleBlock)
def group_shuffle(model: nn.Module, config: GroupShuffleBlock, targets: Targets, ctx: Context) -> Record:
    """Restrict, gate and swap every targeted Conv2d; ``layers`` records each kept layer's share of
    the kernel's energy outside the groups (``error``: relative Frobenius error of the restriction)."""
    candidates: list[tuple[str, nn.Conv2d]] = []
    skipped: dict[str, str] = {}
    for name, module in targets.select(model):
        if not isinstance(module, _CONV_TYPES):
            continue
        reason = unsupported(module, config.groups)
        if reason is not None:
            if _named_explicitly(targets, name):
                raise MethodError(f"{config.kind} cannot convert {name!r}: {reason}")
            skipped[name] = reason
            continue
        candidates.append((name, cast(nn.Conv2d, module)))
    if not candidates and not skipped:
        raise MethodError(f"{config.kind}: the targets select no Conv2d")
    before = n_params(model)
    kept, decisions = gate_and_swap(model, candidates,
                                    lambda _k, _n, conv: grouped_block(conv, config.groups, config.shuffle), ctx, config)
    layers: dict[str, dict[str, Any]] = {}
    for name, conv in candidates:
        if name in kept:
            w = conv.weight.detach().double()
            kept_sq = group_weights(w, config.groups, config.shuffle).pow(2).sum()
            err = float((1 - kept_sq / w.pow(2).sum()).clamp_min(0).sqrt()) if w.abs().sum() > 0 else 0.0
            layers[name] = {"groups": config.groups, "error": round(err, 6)}
    return Record(kind="", data={"groups": config.groups, "shuffle": config.shuffle, "layers": layers,
                                 "skipped": skipped, "gate": [d.to_dict() for d in decisions]},
                  summary={"params_before": before, "params_after": n_params(model), **summarize(decisions),
                           "layers_skipped": len(skipped)})


@register_replay(GroupShuffleBlock)
def replay_group_shuffle(model: nn.Module, record: Record) -> None:
    """Swap in empty grouped blocks (the weights load afterwards)."""
    groups, shuffle, layers = record.data.get("groups"), record.data.get("shuffle"), record.data.get("layers")
    if type(groups) is not int or groups < 2 or not isinstance(shuffle, bool) or not isinstance(layers, dict):
        raise MethodError(f"{record.kind} replay: bad groups / shuffle / layers: {groups!r}, {shuffle!r}")
    for name in layers:
        try:
            conv = model.get_submodule(name) if isinstance(name, str) else None
        except AttributeError:
            conv = None
        if conv is None:
            raise MethodError(f"{record.kind} replay: the model has no layer {name!r}")
        reason = unsupported(conv, groups)
        if reason is not None:
            raise MethodError(f"{record.kind} replay: {name!r} cannot be rebuilt: {reason}")
        swap_module(model, name, grouped_block(cast(nn.Conv2d, conv), groups, shuffle, fit=False))


__all__ = ["ChannelShuffle", "GroupShuffleBlock", "group_weights", "grouped_block", "shuffled_position", "unsupported"]
