"""Layer dropping (``prune.layers``): keep a subset of a transformer's repeated blocks.

Deep transformers are robust to removing whole blocks (Fan et al. 2019, "Reducing
Transformer Depth on Demand with Structured Dropout"; Sajjad et al. 2023), and removing a
block removes its latency entirely, which width pruning rarely achieves on CPU.

The block list is an ``nn.ModuleList`` of same-class blocks (``encoder.layer`` in BERT,
``h`` in GPT-2, ``layers`` in LLaMA, ``block`` in T5), found automatically or named by a
``Targets`` include pattern. The list is shrunk in place (blocks renumbered), and what the
surrounding code reads about depth is kept consistent:

- HF configs on the path to the list: ``num_hidden_layers`` / ``n_layer`` / ``num_layers``
  (``num_decoder_layers`` for a list under ``decoder``) and per-layer lists such as
  ``layer_types``, so the forward loop, KV caches and ``save_pretrained`` ->
  ``from_pretrained`` agree with the new depth;
- ``layer_idx`` attributes inside blocks (KV caches index layers by them);
- T5's relative position bias lives only in block 0 and is shared by all blocks: when
  block 0 is dropped its bias moves to the new first block.

GPT-2 with ``scale_attn_by_inverse_layer_idx=True`` bakes ``1/(layer_idx+1)`` into each
block at construction; the pruned model keeps the original scaling, but a
``from_pretrained`` reload would recompute it from the new indices, so prefer
``slimkit.save``/``restore`` there.

With example inputs (``Context.example_inputs`` or ``calib_data``) the blocks to drop are
run once first: a block whose output shape differs from its input's (a CNN stage that
downsamples, a Swin stage that merges patches) cannot be dropped, and the error names it.
"""
from __future__ import annotations

from typing import Any

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
from ..core.context import first_tensor, forward_batches
from ..core.modules import find_block_lists
from ..core.record import index_list

_DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@method_config
class LayerPrune(MethodConfig):
    """Drop whole transformer blocks: an explicit list, or keep every k-th block."""

    kind = "prune.layers"
    stage = "shrink"

    drop: tuple[int, ...] = ()
    keep_every: int | None = None

    def validate(self) -> None:
        self._require(bool(self.drop) != (self.keep_every is not None), "drop",
                      "exactly one of drop (block indices) or keep_every", {"drop": self.drop, "keep_every": self.keep_every})
        if self.keep_every is not None:
            self._require(self.keep_every >= 1, "keep_every", "an int >= 1", self.keep_every)


def kept_blocks(n: int, config: LayerPrune) -> list[int]:
    """Indices of the blocks kept out of ``n``.

    ``keep_every=k`` keeps blocks ``k-1, 2k-1, ...`` (counting so the last block of a
    multiple-of-k stack is kept); for ``k=2`` this is Fan et al.'s "every other layer"
    (dropping the layers ``d`` with ``d % 2 == 0``). ``drop`` accepts negative indices.
    """
    if config.keep_every is not None:
        kept = [i for i in range(n) if i % config.keep_every == config.keep_every - 1]
        if not kept:
            raise MethodError(f"{config.kind}: keep_every={config.keep_every} keeps none of the {n} blocks")
        return kept
    dropped = set()
    for i in config.drop:
        if not -n <= i < n:
            raise MethodError(f"{config.kind}: drop index {i} is out of range for {n} blocks")
        dropped.add(i % n)
    kept = [i for i in range(n) if i not in dropped]
    if not kept:
        raise MethodError(f"{config.kind}: dropping {sorted(dropped)} would remove all {n} blocks")
    return kept


def _configs_on_path(model: nn.Module, path: str) -> list[Any]:
    """Distinct HF-style ``config`` objects of the modules from the root to ``path``'s parent."""
    out: list[Any] = []
    parts = path.split(".")
    module: nn.Module = model
    for i in range(len(parts)):
        cfg = getattr(module, "config", None)
        if cfg is not None and not isinstance(cfg, nn.Module) and all(cfg is not c for c in out):
            out.append(cfg)
        if i < len(parts) - 1:
            module = getattr(module, parts[i])
    return out


def _update_config(cfg: Any, path: str, n_old: int, kept: list[int]) -> None:
    keys = ("num_decoder_layers",) if "decoder" in path.split(".") and hasattr(cfg, "num_decoder_layers") else _DEPTH_KEYS
    for key in keys:
        if getattr(cfg, key, None) == n_old:
            setattr(cfg, key, len(kept))
            break
    for key, value in list(vars(cfg).items()):
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == n_old:
            setattr(cfg, key, type(value)(value[i] for i in kept))


def _move_first_block_state(old_first: nn.Module, new_first: nn.Module) -> None:
    """Give the new first block the relative position bias only block 0 had (T5)."""
    new_modules = dict(new_first.named_modules())
    for name, m in old_first.named_modules():
        twin = new_modules.get(name)
        if getattr(m, "has_relative_attention_bias", False) and twin is not None \
                and not getattr(twin, "has_relative_attention_bias", True):
            twin.relative_attention_bias = m.relative_attention_bias
            twin.has_relative_attention_bias = True


def _block_list(model: nn.Module, path: str) -> nn.ModuleList:
    blocks = model.get_submodule(path)
    if not isinstance(blocks, nn.ModuleList):
        raise MethodError(f"prune.layers: {path!r} is a {type(blocks).__name__}, not an nn.ModuleList")
    return blocks


def drop_blocks(model: nn.Module, path: str, kept: list[int]) -> None:
    """Keep only blocks ``kept`` of the ModuleList at ``path`` and fix what depends on depth."""
    blocks = _block_list(model, path)
    n_old = len(blocks)
    if not kept or kept[-1] >= n_old:
        raise MethodError(f"prune.layers: kept blocks {kept} do not fit the {n_old} blocks of {path!r}")
    if kept[0] != 0:
        _move_first_block_state(blocks[0], blocks[kept[0]])
    for new, old in enumerate(kept):
        for m in blocks[old].modules():
            if getattr(m, "layer_idx", None) == old:
                m.layer_idx = new  # type: ignore[assignment]
    for i in sorted(set(range(n_old)) - set(kept), reverse=True):
        del blocks[i]  # ModuleList renumbers its keys
    for cfg in _configs_on_path(model, path):
        _update_config(cfg, path, n_old, kept)


def block_shapes(model: nn.Module, path: str, batch: Any) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{block index: (input shape, output shape)}`` of the hidden state through each block on ``batch``."""
    seen: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for i, block in enumerate(_block_list(model, path)):
        def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any, i: int = i) -> None:
            x, y = first_tensor(args), first_tensor(out)
            x = x if x is not None else first_tensor(kwargs)
            if x is not None and y is not None and i not in seen:
                seen[i] = (tuple(x.shape), tuple(y.shape))
        hooks.append(block.register_forward_hook(hook, with_kwargs=True))
    forward_batches(model, [batch], hooks)
    return seen


def check_droppable(model: nn.Module, path: str, dropped: list[int], batch: Any, kind: str) -> None:
    """Only blocks that map the hidden state to the same shape can go (a CNN stage that
    downsamples, or a Swin stage that merges patches, cannot): fail naming the block."""
    blocks = _block_list(model, path)
    for i, (x, y) in block_shapes(model, path, batch).items():
        if i in dropped and x != y:
            raise MethodError(f"{kind}: block {path}.{i} ({type(blocks[i]).__name__}) maps shape {list(x)} to "
                              f"{list(y)}; only blocks that keep the shape of their input can be dropped")


@register_method(LayerPrune)
def drop_layers(model: nn.Module, config: LayerPrune, targets: Targets, ctx: Context) -> Record:
    params_before = sum(p.numel() for p in model.parameters())
    lists: dict[str, dict[str, Any]] = {}
    batch = ctx.example_inputs if ctx.example_inputs is not None else next(iter(ctx.calib_data or []), None)
    for path in find_block_lists(model, targets):
        n = len(_block_list(model, path))
        kept = kept_blocks(n, config)
        if batch is not None:
            check_droppable(model, path, sorted(set(range(n)) - set(kept)), batch, config.kind)
        drop_blocks(model, path, kept)
        lists[path] = {"kept": kept, "n_before": n}
    if batch is not None:
        try:
            forward_batches(model, [batch])
        except Exception as exc:  # the model's own forward raises many types on a depth it cannot take
            raise MethodError(f"{config.kind}: the model no longer runs after dropping blocks "
                              f"{ {p: sorted(set(range(v['n_before'])) - set(v['kept'])) for p, v in lists.items()} }"
                              f": {type(exc).__name__}: {exc}") from exc
    params_after = sum(p.numel() for p in model.parameters())
    return Record(
        kind=config.kind,
        data={"lists": lists},
        summary={"blocks_before": sum(v["n_before"] for v in lists.values()),
                 "blocks_after": sum(len(v["kept"]) for v in lists.values()),
                 "params_before": params_before, "params_after": params_after},
    )


@register_replay(LayerPrune)
def replay_layers(model: nn.Module, record: Record) -> None:
    for path, info in record.data["lists"].items():
        n = len(_block_list(model, path))
        if n != info["n_before"]:
            raise MethodError(f"prune.layers replay: {path!r} has {n} blocks, the record expects {info['n_before']}")
        kept = index_list(info["kept"], n, f"prune.layers replay: {path!r}")
        if kept != sorted(kept):
            raise MethodError(f"prune.layers replay: kept blocks of {path!r} must be increasing, got {kept}")
        drop_blocks(model, path, kept)


__all__ = ["LayerPrune", "drop_blocks", "find_block_lists", "kept_blocks"]
