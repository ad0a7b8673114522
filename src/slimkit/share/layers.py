"""Cross-layer parameter sharing (``share.layers``): groups of consecutive blocks hold one set of weights.

ALBERT (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations") shares one transformer block across all layers; "all-shared" loses
accuracy, sharing within groups of consecutive blocks loses less (ALBERT §4.5; Takase &
Kiyono 2021, "Lessons on Parameter Sharing across Layers in Transformers"). Sharing keeps
the depth, so MACs and latency do not fall: it is a *size* method (fewer parameters to
store and to ship), usually followed by distillation to recover what averaging cost.

How the tie is made: every block of a group keeps its own module object (so per-position
state such as ``layer_idx``, which HF KV caches index by, and T5's block-0-only relative
position bias stay as they were, and forward hooks on a block fire once per forward), and
each parameter the group's blocks all have (same name and shape) becomes one
``nn.Parameter`` object registered in every block. Then

- ``model.parameters()`` yields it once, so an optimizer updates it once, and autograd sums
  its gradient over every block that used it (the ALBERT update);
- ``state_dict`` lists it under each block's name, pointing at the same memory, and
  ``slimkit.save`` stores it once (an ``alias`` entry in the layout); ``measure.profile``
  counts it once;
- ``restore`` re-ties the blocks from the record (:func:`replay_share`) before the weights
  load strictly, so the restored model is tied too.

Kinds that change parameters in place (``quantize.cast``, ``prune.vocab``, training) keep the
ties. Kinds that *replace* modules one name at a time (``quantize.dynamic`` / ``static``,
``prune.channel``) see each block's layer separately and write one copy per block: put
them before ``share.layers`` or expect the file to grow back.

The block list is found as ``prune.layers`` finds it (:func:`slimkit.prune.layers.find_block_lists`):
the outermost ``nn.ModuleList`` of same-class blocks, or the list a ``Targets`` include
pattern names.
"""
from __future__ import annotations

from typing import Any, Literal

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
from ..core.modules import owner_of
from ..core.record import index_list
from ..prune.layers import find_block_lists


@method_config
class LayersShare(MethodConfig):
    """Share one set of weights across groups of consecutive transformer blocks (ALBERT)."""

    kind = "share.layers"
    stage = "shrink"

    # ``groups=k``: split the n blocks into k runs of consecutive blocks (sizes differ by at
    # most one, larger runs first); ``groups=1`` is ALBERT's all-shared model.
    groups: int | None = None
    # explicit groups of block indices, e.g. [[0, 1, 2], [3, 4, 5]]; blocks in no group stay unshared
    group_map: tuple[tuple[int, ...], ...] = ()
    # the shared weights start from the mean of the group's blocks, or from one of them
    init: Literal["mean", "first", "last", "index"] = "mean"
    # with init="index": the position inside each group whose block is kept (negative counts from the end)
    index: int = 0

    def validate(self) -> None:
        self._require((self.groups is None) != (not self.group_map), "groups",
                      "exactly one of groups (a count) or group_map (lists of block indices)",
                      {"groups": self.groups, "group_map": self.group_map})
        if self.groups is not None:
            self._require(self.groups >= 1, "groups", "an int >= 1", self.groups)
        flat = [i for g in self.group_map for i in g]
        self._require(all(len(g) >= 1 for g in self.group_map), "group_map", "non-empty groups", self.group_map)
        self._require(all(i >= 0 for i in flat), "group_map", "block indices >= 0", self.group_map)
        self._require(len(set(flat)) == len(flat), "group_map", "groups that do not repeat a block", self.group_map)
        self._require(self.init == "index" or self.index == 0, "index", "0 unless init is 'index'", self.index)


def group_blocks(n: int, config: LayersShare) -> list[list[int]]:
    """The groups of block indices (each ascending) that share weights, out of ``n`` blocks."""
    if config.groups is not None:
        if config.groups > n:
            raise MethodError(f"{config.kind}: groups={config.groups} is more than the {n} blocks")
        base, extra = divmod(n, config.groups)
        out, start = [], 0
        for g in range(config.groups):
            size = base + (1 if g < extra else 0)
            out.append(list(range(start, start + size)))
            start += size
        return out
    for g in config.group_map:
        bad = [i for i in g if i >= n]
        if bad:
            raise MethodError(f"{config.kind}: group_map names block {bad[0]}, but the list has {n} blocks")
    return [sorted(g) for g in config.group_map]


def _source(group: list[int], config: LayersShare) -> int | None:
    """Position inside ``group`` whose weights seed the shared ones (None: the mean)."""
    if config.init == "mean":
        return None
    if config.init == "first":
        return 0
    if config.init == "last":
        return len(group) - 1
    if not -len(group) <= config.index < len(group):
        raise MethodError(f"{config.kind}: index {config.index} is outside the group {group} of {len(group)} blocks")
    return config.index % len(group)


def common_parameters(blocks: list[nn.Module]) -> tuple[list[str], list[str]]:
    """``(tied, untied)`` parameter names: those every block has with one shape and dtype, and the rest.

    Names come with duplicates kept (a parameter tied inside a block under two names is
    re-pointed under both). Same-class blocks normally have identical parameters; T5's
    relative position bias lives only in block 0, so it stays that block's own.
    """
    named = [dict(b.named_parameters(remove_duplicate=False)) for b in blocks]
    first = named[0]
    tied = [n for n, p in first.items()
            if all(n in d and d[n].shape == p.shape and d[n].dtype == p.dtype for d in named[1:])]
    every = {n for d in named for n in d}
    return tied, sorted(every - set(tied))


def tie_group(blocks: list[nn.Module], names: list[str], source: int | None | Literal["keep"]) -> None:
    """Make ``names`` one Parameter (the first block's object) in every block of ``blocks``.

    ``source``: None writes the mean of the blocks' values into it, an int that block's
    values, ``"keep"`` leaves the values alone (replay: the weights are loaded afterwards).
    """
    named = [dict(b.named_parameters(remove_duplicate=False)) for b in blocks]
    for name in names:
        shared = named[0][name]
        with torch.no_grad():
            if source is None:
                value = torch.stack([d[name].detach() for d in named]).mean(0)  # [group, *shape] -> shape
                shared.copy_(value)
            elif source != "keep" and source != 0:
                shared.copy_(named[source][name].detach())
        for block in blocks[1:]:
            owner, attr = owner_of(block, name)
            setattr(owner, attr, shared)


def _block_list(model: nn.Module, path: str, kind: str) -> nn.ModuleList:
    blocks = model.get_submodule(path)
    if not isinstance(blocks, nn.ModuleList):
        raise MethodError(f"{kind}: {path!r} is a {type(blocks).__name__}, not an nn.ModuleList of blocks")
    return blocks


def _unique_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register_method(LayersShare)
def share_layers(model: nn.Module, config: LayersShare, targets: Targets, ctx: Context) -> Record:
    params_before = _unique_params(model)
    lists: dict[str, dict[str, Any]] = {}
    for path in find_block_lists(model, targets, config.kind):
        blocks = _block_list(model, path, config.kind)
        groups = group_blocks(len(blocks), config)
        untied: dict[str, list[str]] = {}
        for group in groups:
            members = [blocks[i] for i in group]
            tied, rest = common_parameters(members)
            if not tied:
                raise MethodError(f"{config.kind}: blocks {group} of {path!r} have no parameter in common to share")
            tie_group(members, tied, _source(group, config))
            if rest:
                untied[str(group[0])] = rest
        lists[path] = {"n_blocks": len(blocks), "groups": groups, "untied": untied}
    params_after = _unique_params(model)
    stored = sum(v["n_blocks"] - sum(len(g) - 1 for g in v["groups"]) for v in lists.values())
    return Record(
        kind=config.kind,
        data={"lists": lists},
        summary={"blocks": sum(v["n_blocks"] for v in lists.values()), "blocks_stored": stored,
                 "groups": sum(len(v["groups"]) for v in lists.values()),
                 "params_before": params_before, "params_after": params_after},
    )


@register_replay(LayersShare)
def replay_share(model: nn.Module, record: Record) -> None:
    """Re-tie the recorded groups (values are left alone: the saved weights load next, strictly)."""
    where = f"{record.kind} replay"
    for path, info in record.data["lists"].items():
        blocks = _block_list(model, path, record.kind)
        if len(blocks) != info["n_blocks"]:
            raise MethodError(f"{where}: {path!r} has {len(blocks)} blocks, the record expects {info['n_blocks']}")
        groups = info["groups"]
        if not isinstance(groups, list):
            raise MethodError(f"{where}: groups of {path!r} must be a list, got {type(groups).__name__}")
        index_list([i for g in groups for i in (g if isinstance(g, list) else [g])], len(blocks), f"{where}: {path!r}")
        for group in groups:
            if not isinstance(group, list) or not group or group != sorted(group):
                raise MethodError(f"{where}: a group of {path!r} must be a non-empty ascending list, got {group!r}")
            members = [blocks[i] for i in group]
            tied, rest = common_parameters(members)
            if rest != info["untied"].get(str(group[0]), []):
                raise MethodError(f"{where}: blocks {group} of {path!r} do not have the parameters the record "
                                  f"shared (unshared now: {rest})")
            tie_group(members, tied, "keep")


__all__ = ["LayersShare", "common_parameters", "group_blocks", "tie_group"]
