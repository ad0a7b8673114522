"""The early-exit runtime: exit heads, the block list that stops, and the model class that decides.

How a forward pass exits without re-implementing the host model's forward: the model's own
forward runs unchanged, but its block list (``encoder.layer`` in BERT) is an
:class:`ExitBlockList`. HF encoders walk the list with ``for layer in self.layer``; while an
:class:`ExitRun` is attached, the list's iterator watches each block's output (a forward
hook that lives only while that block runs), scores it with that block's exit head and
simply *stops yielding blocks* once every row of the batch has exited. The remaining
blocks never run; the encoder returns the exit block's hidden state and the model's own
head (pooler + classifier, a few small matmuls) runs on it; the root class
(:func:`exit_class`, a subclass of the model's class made once per class) then replaces
the logits of every exited row by its exit head's logits.

Batch > 1: each row exits on its own (its logits are frozen at the block where it
exited), but the blocks keep running on the whole batch until *every* row has exited, so
a batch is only as fast as its hardest row. Rows never interact inside an encoder, so a
row's logits and exit block are the same as when it is run alone (up to float rounding).
Dropping exited rows from the batch ("compaction") would need the host forward's hidden
tensor, which the encoder loop owns; it is not done.

Export: the exit decision is data-dependent control flow, which a static graph (ONNX,
torch.export) cannot hold. Tracing a model whose exits are on raises a :class:`MethodError`;
with ``model.exit_settings.enabled = False`` the full-depth model exports (the original
logits; the exit heads are not in the graph). Training mode always runs every block.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import struct
from typing import Any, Literal

import torch
from torch import nn

from ..core.context import first_tensor
from ..core.errors import MethodError
from ..zoo.minilm import mean_pool

Criterion = Literal["entropy", "patience", "entropy_patience"]
Pooling = Literal["mean", "cls"]
KIND = "dynamic.early_exit"


class ExitHead(nn.Module):
    """Pooled hidden state ``[B, H]`` -> logits ``[B, C]``: ``Linear-tanh-Linear`` (DeeBERT's
    pooler + classifier), or one ``Linear`` when ``hidden == 0``."""

    def __init__(self, width: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, hidden) if hidden else None
        self.out = nn.Linear(hidden or width, classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.proj(pooled)) if self.proj is not None else pooled  # [B, hidden]
        return self.out(x)  # [B, C]


class ExitHeads(nn.Module):
    """One :class:`ExitHead` per block but the last (keys ``exit_heads.<i>.*``).

    Deliberately *not* an ``nn.ModuleList``: ``prune.layers`` / ``share.layers`` look for
    lists of same-class modules and must keep finding only the transformer blocks.
    """

    def __init__(self, n: int, width: int, classes: int, hidden: int) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(str(i), ExitHead(width, classes, hidden))

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> ExitHead:
        return self._modules[str(i)]  # type: ignore[return-value]


@dataclasses.dataclass
class ExitSettings:
    """When to exit; mutable at run time (a threshold sweep changes ``threshold`` in place).

    ``entropy``: a row exits after block ``i`` when its exit head's prediction entropy,
    divided by ``log(C)`` (so 0 = one-hot, 1 = uniform), is *below* ``threshold``: 0 never
    exits, 1 exits after the first block unless a prediction is exactly uniform.
    ``patience`` (PABEE): a row exits once ``patience`` consecutive exit heads after the
    first agree with the previous one's class. ``entropy_patience`` (both signals): a row
    exits after block ``i`` when its entropy is below ``threshold`` *and* head ``i`` agrees
    with the ``patience`` heads before it, or, alone, when its entropy is below
    ``solo_ratio * threshold`` (a very confident head needs no second opinion; ``solo_ratio``
    1 is the ``entropy`` rule, 0 never exits without agreement). ``enabled=False`` runs every
    block.
    """

    criterion: Criterion = "entropy"
    threshold: float = 0.3
    patience: int = 2
    pooling: Pooling = "mean"
    solo_ratio: float = 0.5
    enabled: bool = True


@dataclasses.dataclass
class ExitStats:
    """What the exits did, for measurement: blocks run per row, summed since :meth:`reset`.

    ``last``: blocks each row of the last call needed (1..n); ``counts[i]``: rows that
    finished after block ``i + 1`` (index ``n - 1``: the full model); ``batch_blocks``:
    blocks the batches really executed (at batch > 1 a batch runs until its last row exits).
    """

    n_blocks: int
    last: list[int] = dataclasses.field(default_factory=list)
    counts: list[int] = dataclasses.field(default_factory=list)
    batch_blocks: int = 0
    batches: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * self.n_blocks

    def reset(self) -> None:
        self.last, self.counts, self.batch_blocks, self.batches = [], [0] * self.n_blocks, 0, 0

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def mean_blocks(self) -> float:
        """Average blocks a row needed (``n_blocks`` = no saving)."""
        return sum((i + 1) * c for i, c in enumerate(self.counts)) / max(1, self.rows)


def _f32(x: float) -> float:
    """``x`` rounded to float32, as a float32 tensor compared with a Python scalar sees it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over ``log(C)``: ``[B, C]`` -> ``[B]`` in [0, 1]."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, C]
    return -(logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: Pooling) -> torch.Tensor:
    """``[B, T, H]`` -> ``[B, H]``: masked mean, or the first token."""
    if how == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(dim=1)
    return mean_pool(hidden, mask.to(hidden.device))


class ExitRun:
    """State of one forward pass: which rows have exited, their logits, and (collect mode) every head's logits."""

    def __init__(self, heads: ExitHeads, settings: ExitSettings, mask: torch.Tensor | None, *,
                 collect: bool = False) -> None:
        if mask is not None and bool(mask.all()):
            mask = None  # no padding (every batch-1 request): a plain mean, fewer ops per block
        self.heads, self.settings, self.mask, self.collect = heads, settings, mask, collect
        self.collected: list[torch.Tensor] = []  # collect mode: [B, C] per exit head, with grad
        self.exited: torch.Tensor | None = None  # [B] bool
        self.logits: torch.Tensor | None = None  # [B, C] logits of exited rows (others undefined)
        self.layer: torch.Tensor | None = None  # [B] blocks run when the row exited (n: never)
        self.streak: torch.Tensor | None = None  # [B] patience counter
        self.prev: torch.Tensor | None = None  # [B] previous head's class
        self.streak_one, self.prev_one = 0, -1  # the same two at batch 1, as Python ints
        self.blocks_run = 0

    def observe(self, i: int, out: Any) -> bool:
        """Score block ``i``'s output; True when every row has exited (stop running blocks)."""
        self.blocks_run = i + 1
        hidden = out if isinstance(out, torch.Tensor) else first_tensor(out)
        if hidden is None or hidden.dim() != 3:
            raise MethodError(f"{KIND}: block {i} returned {type(out).__name__} without a [B, T, H] hidden state")
        logits = self.heads[i](pool(hidden, self.mask, self.settings.pooling))  # [B, C]
        if self.collect:
            self.collected.append(logits)
            return False
        b = logits.shape[0]
        if b == 1:  # batch 1 (serving): the decision in Python scalars, no bookkeeping across rows
            if not self._decide_one(logits):
                return False
            self.exited = torch.ones(1, dtype=torch.bool, device=logits.device)
            self.logits, self.layer = logits, torch.tensor([i + 1])
            return True
        if self.exited is None:
            self.exited = torch.zeros(b, dtype=torch.bool, device=logits.device)
            self.logits = torch.zeros_like(logits)
            self.layer = torch.zeros(b, dtype=torch.long)
            self.streak = torch.zeros(b, dtype=torch.long, device=logits.device)
        new = self._decide(logits) & ~self.exited  # [B]
        if bool(new.any()):
            assert self.logits is not None and self.layer is not None
            self.logits[new] = logits[new]
            self.layer[new.cpu()] = i + 1
            self.exited |= new
        return bool(self.exited.all())

    def _decide_one(self, logits: torch.Tensor) -> bool:
        """:meth:`_decide` for one row ``[1, C]`` with a few tensor ops and one or two syncs
        instead of a dozen small ops (a per-block cost at batch 1). Same float32 entropy and the
        same float32 comparison as the batched rule, so a row decides alike in and out of a batch."""
        s = self.settings
        neg = 0.0
        if s.criterion != "patience":
            logp = torch.log_softmax(logits.float(), dim=-1)  # [1, C]
            neg = float((logp.exp() * logp).sum())  # minus the entropy, a float32 value
            bound = s.threshold * math.log(logits.shape[-1])
            if s.criterion == "entropy":
                return neg > _f32(-bound)
        pred = int(logits[0].argmax())
        self.streak_one = self.streak_one + 1 if pred == self.prev_one else 0
        self.prev_one = pred
        if s.criterion == "patience":
            return self.streak_one >= s.patience
        return (neg > _f32(-bound) and self.streak_one >= s.patience) or neg > _f32(-s.solo_ratio * bound)

    def _decide(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.criterion != "patience":  # entropy / log C < threshold, without the division
            logp = torch.log_softmax(logits.float(), dim=-1)  # [B, C]
            neg_ent = (logp.exp() * logp).sum(-1)  # [B], minus the entropy
            bound = s.threshold * math.log(logits.shape[-1])
            if s.criterion == "entropy":
                return neg_ent > -bound
        pred = logits.argmax(-1)  # [B]
        assert self.streak is not None
        if self.prev is not None:
            self.streak = torch.where(pred == self.prev, self.streak + 1, torch.zeros_like(self.streak))
        self.prev = pred
        if s.criterion == "patience":
            return self.streak >= s.patience
        # entropy_patience: confident and agreeing, or very confident alone
        return ((neg_ent > -bound) & (self.streak >= s.patience)) | (neg_ent > -s.solo_ratio * bound)


def replay_exits(exit_logits: list[torch.Tensor], settings: ExitSettings) -> torch.Tensor:
    """Blocks each row would run (``[B]``, 1..n) under ``settings``, from every exit head's
    logits (``[B, C]`` each, as :func:`collect_exits` returns them; n = heads + 1).

    The offline twin of a live forward, with the same decision code: a threshold sweep runs
    the blocks once and replays every rule and threshold on the saved logits.
    """
    b = exit_logits[0].shape[0]
    run = ExitRun(None, settings, None)  # type: ignore[arg-type]  # decisions only, no heads
    run.streak = torch.zeros(b, dtype=torch.long, device=exit_logits[0].device)
    layer = torch.full((b,), len(exit_logits) + 1, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    for i, logits in enumerate(exit_logits):
        new = run._decide(logits).cpu() & ~done  # [B]
        layer[new] = i + 1
        done |= new
    return layer


class ExitBlockList(nn.ModuleList):
    """The model's block list; iterating it while an :class:`ExitRun` is attached stops at the exit.

    Same keys and same blocks as the ``nn.ModuleList`` it replaces; indexing, ``len`` and
    ``named_modules`` are unchanged, so the host forward and other methods see a normal list.
    """

    def __iter__(self):  # type: ignore[no-untyped-def]
        run: ExitRun | None = self.__dict__.get("_exit_run")
        blocks = list(self._modules.values())
        if run is None:
            yield from blocks
            return
        for i, block in enumerate(blocks):
            seen: dict[str, Any] = {}
            handle = block.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out))
            try:
                yield block
            finally:
                handle.remove()
            if i == len(blocks) - 1:  # the last block's prediction is the model's own head
                run.blocks_run = len(blocks)
                return
            if "out" not in seen:
                raise MethodError(f"{KIND}: the model's forward took block {i} from the list without calling it")
            if run.observe(i, seen["out"]):
                return


def _exit_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The exit-aware forward of every :func:`exit_class` (``self`` is the wrapped model)."""
    base = self.__dict__["_exit_base"]
    settings: ExitSettings = self.__dict__["exit_settings"]
    if self.training or not settings.enabled:
        return base.forward(self, *args, **kwargs)  # full depth (training, exits off)
    if _tracing():
        raise MethodError(f"{KIND}: cannot export or trace a model whose exits are on: the exit decision is "
                          "data-dependent control flow a static graph cannot hold. Set "
                          "model.exit_settings.enabled = False to export the full-depth model (the original "
                          "logits; the exit heads are left out of the graph)")
    run = ExitRun(self.exit_heads, settings, attention_mask(base, self, args, kwargs))
    blocks = exit_blocks(self)
    blocks.__dict__["_exit_run"] = run
    try:
        out = base.forward(self, *args, **kwargs)
    finally:
        blocks.__dict__.pop("_exit_run", None)
    final = _logits(out)
    n = len(blocks)
    layer = torch.full((final.shape[0],), n, dtype=torch.long)
    if run.exited is not None and bool(run.exited.any()):
        assert run.logits is not None and run.layer is not None
        final = torch.where(run.exited.unsqueeze(-1), run.logits.to(final.dtype), final)  # [B, C]
        layer = torch.where(run.layer > 0, run.layer, layer)
        out = _with_logits(out, final)
    stats: ExitStats = self.__dict__["exit_stats"]
    stats.last = layer.tolist()
    for k in stats.last:
        stats.counts[k - 1] += 1
    stats.batch_blocks += run.blocks_run
    stats.batches += 1
    return out


def collect_exits(model: nn.Module, *args: Any, **kwargs: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every exit head's logits (``[B, C]`` each, with grad) and the model's own final logits, all
    blocks run (training and offline threshold sweeps use this)."""
    base = model.__dict__["_exit_base"]
    settings: ExitSettings = model.__dict__["exit_settings"]
    run = ExitRun(model.exit_heads, settings, attention_mask(base, model, args, kwargs),  # type: ignore[arg-type]
                  collect=True)
    blocks = exit_blocks(model)
    blocks.__dict__["_exit_run"] = run
    try:
        out = base.forward(model, *args, **kwargs)
    finally:
        blocks.__dict__.pop("_exit_run", None)
    if len(run.collected) != len(blocks) - 1:
        raise MethodError(f"{KIND}: the forward ran {len(run.collected) + 1} of {len(blocks)} blocks through "
                          "the block list's iterator; this model's encoder does not walk its blocks in order")
    return run.collected, _logits(out)


def _tracing() -> bool:
    """True under TorchScript tracing, ONNX export, torch.export / dynamo and FX symbolic tracing."""
    from torch.fx import _symbolic_trace as fx

    is_fx_tracing = getattr(fx, "is_fx_symbolic_tracing", fx.is_fx_tracing)  # the latter warns in torch 2.13

    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
                or exporting() or is_fx_tracing())


_SIGNATURES: dict[type, inspect.Signature] = {}


def attention_mask(base: type, model: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The ``attention_mask`` argument of this call (``[B, T]``), wherever it was passed, or None."""
    if "attention_mask" in kwargs:  # the usual call: no signature binding (tens of microseconds at batch 1)
        mask = kwargs["attention_mask"]
    else:
        sig = _SIGNATURES.get(base)
        if sig is None:
            sig = _SIGNATURES[base] = inspect.signature(base.forward)
        try:
            mask = sig.bind_partial(model, *args, **kwargs).arguments.get("attention_mask")
        except TypeError:
            return None
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def exit_blocks(model: nn.Module) -> ExitBlockList:
    path = model.__dict__["_exit_path"]
    blocks = model.get_submodule(path)
    heads = model.exit_heads
    if not isinstance(blocks, ExitBlockList) or len(heads) != len(blocks) - 1:  # type: ignore[arg-type]
        raise MethodError(f"{KIND}: {path!r} is no longer the {len(heads) + 1}-block list the exit heads were "  # type: ignore[arg-type]
                          "built for (was it pruned or replaced after early exit? apply those methods first)")
    return blocks


def _logits(out: Any) -> torch.Tensor:
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)):
        logits = first_tensor(out)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise MethodError(f"{KIND} needs a classifier returning logits [B, C] (a tensor or an output with .logits); "
                          f"got {type(out).__name__}" + (f" of shape {tuple(logits.shape)}"
                                                          if isinstance(logits, torch.Tensor) else ""))
    return logits


def _with_logits(out: Any, logits: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return logits
    if hasattr(out, "logits"):
        out["logits"] = logits  # HF ModelOutput: sets the key and the attribute
        return out
    items = list(out)
    items[next(i for i, v in enumerate(items) if isinstance(v, torch.Tensor))] = logits
    return type(out)(items)


_CLASSES: dict[type, type] = {}


def exit_class(base: type) -> type:
    """``EarlyExit<Base>``: ``base`` with the exit-aware forward (made once per class, so
    ``isinstance`` checks, deep copies and every other method of the host keep working)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"EarlyExit{base.__name__}", (base,), {"forward": _exit_forward,
                                                                     "__module__": __name__})
    return _CLASSES[base]


def install(model: nn.Module, path: str, heads: ExitHeads, settings: ExitSettings) -> None:
    """Turn ``model`` into its early-exit class in place: the block list at ``path`` becomes an
    :class:`ExitBlockList`, ``heads`` become ``model.exit_heads``."""
    if "_exit_base" in model.__dict__:
        raise MethodError(f"{KIND}: the model already has exit heads")
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, ExitBlockList(list(old)))
    base = type(model)
    model.add_module("exit_heads", heads)
    model.__dict__.update(_exit_base=base, _exit_path=path, exit_settings=settings,
                          exit_stats=ExitStats(len(old)))
    model.__class__ = exit_class(base)


__all__ = ["ExitBlockList", "ExitHead", "ExitHeads", "ExitRun", "ExitSettings", "ExitStats", "collect_exits",
           "exit_class", "install", "normalized_entropy", "replay_exits"]
