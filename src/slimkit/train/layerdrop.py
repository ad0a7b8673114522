"""``train.layerdrop``: train with whole blocks randomly skipped, so dropping blocks later costs little.

LayerDrop (Fan et al. 2019, "Reducing Transformer Depth on Demand with Structured Dropout")
skips each transformer block of a training step with probability ``p``, the identity in its
place; stochastic depth (Huang et al. 2016) does the same to residual blocks, with the rate
growing with depth. A network trained this way has learnt to work without any one block, so
``prune.layers`` afterwards (every other block, as the paper prunes) loses less than it does
on a model that always ran every block.

How it plugs in:

- The blocks are the transformer's block list (the one ``prune.layers`` finds: ``encoder.layer``
  of BERT, ``h`` of GPT-2, ...), or, with non-default targets, the blocks of the lists they
  name or else the modules they select (residual blocks of a CNN: ``types: [BasicBlock]``).
  A block whose output shape differs from its input's (a stage that downsamples) cannot be
  skipped, and the error names it.
- Skipping is a wrapper on each block's ``forward`` (an instance attribute), installed for the
  run and removed afterwards: the trained model has the same architecture and no hook, wrapper
  or attribute left behind. Decisions come from a generator seeded from ``seed`` (``Context.seed``
  when null), one draw per block call in training mode, so a run is reproducible and the
  engine's own RNG stream (dropout, data) is untouched.
- In eval mode every block runs (also in the engine's periodic evaluations). LayerDrop needs no
  rescaling at inference: a skipped block is the identity, not a zeroed branch whose expected
  value must be matched (Fan et al. §3; stochastic depth's survival-rate scaling applies to a
  residual *branch*, which this kind does not isolate).
- The training objective is an existing kind, run as it is through the one engine:
  ``objective: embedding`` is ``distill.embedding`` (pooled-embedding match against
  ``Context.teacher``), ``logits`` is ``distill.logits``, ``task`` is ``Context.loss_fn`` on
  ``Context.train_data``. ``objective_options`` are that kind's own options (``cache_teacher``,
  ``loss``, ``temperature``, ...); the loop options (``steps``, ``lr``, ...) are this kind's.

Only weights change (stage ``train``); the replay checks that the recorded blocks are there.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from ..core import (
    ConfigError,
    Context,
    MethodError,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from ..core.context import first_tensor, forward_batches
from ..core.modules import find_block_lists
from ..core.registry import config_class, entry_for
from . import parallel
from .engine import task_loss
from .options import TrainOptions
from .parts import split_batch
from .run import run_kind, tail_mean

Objective = Literal["embedding", "logits", "task"]
_KINDS = {"embedding": "distill.embedding", "logits": "distill.logits"}


@method_config
class LayerdropTrain(TrainOptions):
    """Train with random block skipping (LayerDrop / stochastic depth); every block runs at eval.

    ``p`` is the skip probability; ``drop_schedule: linear`` ramps it with depth (block ``l`` of
    ``L``, counting from 1, skips with ``p * l / L``, as stochastic depth does), ``uniform``
    uses ``p`` for every block. (The name is not ``schedule``: that is the LR schedule.)
    """

    kind = "train.layerdrop"

    p: float = 0.2
    drop_schedule: Literal["uniform", "linear"] = "uniform"
    objective: Objective = "embedding"
    objective_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        self._require(0.0 < self.p < 1.0, "p", "a skip probability in (0, 1)", self.p)
        if self.objective == "task":
            self._require(not self.objective_options, "objective_options",
                          "empty for objective: task (Context.loss_fn takes no options)", self.objective_options)
        else:
            self.objective_config()  # the objective kind validates its own options, named here

    def objective_config(self) -> TrainOptions:
        """The config of the objective kind: its ``objective_options`` plus this kind's loop options."""
        kind = _KINDS[self.objective]
        cls = config_class(kind)
        loop = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainOptions)}
        clash = sorted(set(self.objective_options) & set(loop))
        self._require(not clash, "objective_options", "the objective's own options (loop options such as "
                      f"{clash} are set on train.layerdrop itself)", self.objective_options)
        try:
            config = cls.from_dict({**loop, **self.objective_options})
        except ConfigError as exc:
            raise ConfigError(f"{kind}: {exc.bare}", key=f"objective_options.{exc.key}") from None
        assert isinstance(config, TrainOptions)
        return config


def drop_probabilities(n: int, p: float, schedule: str) -> list[float]:
    """Skip probability of each of ``n`` blocks: ``p`` each, or ``p * l / n`` for block ``l = 1..n``."""
    if schedule == "linear":
        return [p * (i + 1) / n for i in range(n)]
    return [p] * n


def find_blocks(model: nn.Module, targets: Targets, kind: str) -> list[tuple[str, nn.Module]]:
    """The blocks to skip, in depth order: the blocks of the block list(s), else the modules the targets select."""
    explicit = targets != Targets()
    try:
        lists = find_block_lists(model, targets, kind)
    except MethodError:
        if not explicit:
            raise MethodError(f"{kind}: found no nn.ModuleList of same-class blocks in the model "
                              f"({type(model).__name__}); name the blocks to skip with targets "
                              "(include patterns or types, e.g. types: [BasicBlock])") from None
        lists = []
    if lists:
        found = [(f"{p}.{i}", b) for p in lists for i, b in enumerate(model.get_submodule(p))]
    else:
        chosen = [(n, m) for n, m in targets.iter(model) if n and not isinstance(m, (nn.ModuleList, nn.ModuleDict))]
        found = [(n, m) for n, m in chosen if not any(n.startswith(o + ".") for o, _ in chosen)]
    if not found:
        raise MethodError(f"{kind}: targets {targets.to_dict()} select no module to skip")
    # one entry per module object: a block shared by several positions gets one wrapper, which
    # draws at every call
    return [(n, m) for i, (n, m) in enumerate(found) if all(m is not o for _, o in found[:i])]


def _block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The hidden state a block receives: its first positional tensor, else ``hidden_states``, else any tensor."""
    x = first_tensor(args)
    if x is None:
        x = kwargs.get("hidden_states")
    return x if isinstance(x, torch.Tensor) else first_tensor(kwargs)


Identity = Callable[[torch.Tensor], Any]


def probe_identities(model: nn.Module, blocks: list[tuple[str, nn.Module]], batch: Any,
                     kind: str) -> list[Identity]:
    """Run ``batch`` once (eval, no grad) and return, per block, what stands in for it when skipped.

    A block returning a tensor is replaced by its input; one returning a tuple/list whose first
    item is the hidden state by ``(input, None, ...)`` (older HF layers add attention maps after
    it, which a skipped block does not have). A block that changes the shape, returns another
    structure, or never runs on the batch cannot be skipped: a MethodError names it.
    """
    seen: dict[int, tuple[tuple[int, ...] | None, Any]] = {}
    hooks = []
    for i, (_, block) in enumerate(blocks):
        def hook(_m: nn.Module, args: tuple, kwargs: dict, out: Any, i: int = i) -> None:
            if i not in seen:
                x = _block_input(args, kwargs)
                seen[i] = (None if x is None else tuple(x.shape), out)
        hooks.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        forward_batches(model, [batch], hooks)
    except Exception as exc:  # the model's own forward raises many types on inputs it cannot take
        raise MethodError(f"{kind}: the model does not run on the probe batch: {type(exc).__name__}: {exc}") from exc
    out: list[Identity] = []
    for i, (name, block) in enumerate(blocks):
        if i not in seen:
            raise MethodError(f"{kind}: block {name} ({type(block).__name__}) did not run on the probe batch")
        shape, y = seen[i]
        y0 = y if isinstance(y, torch.Tensor) else (y[0] if isinstance(y, (tuple, list)) and y else None)
        if not isinstance(y0, torch.Tensor) or shape is None:
            raise MethodError(f"{kind}: block {name} ({type(block).__name__}) returns a {type(y).__name__}; only "
                              "blocks taking a hidden-state tensor and returning it (alone or first in a tuple) "
                              "can be skipped")
        if tuple(y0.shape) != shape:
            raise MethodError(f"{kind}: block {name} ({type(block).__name__}) maps shape {list(shape)} to "
                              f"{list(y0.shape)}; only blocks that keep the shape of their input can be skipped")
        if isinstance(y, torch.Tensor):
            out.append(lambda x: x)
        else:
            n, seq = len(y), list if isinstance(y, list) else tuple
            out.append(lambda x, n=n, seq=seq: seq((x, *([None] * (n - 1)))))
    return out


class BlockDropper:
    """Skips blocks at random while they are in training mode; counts runs and skips per block.

    Installed by :meth:`installed` (a context manager) as an instance-level ``forward`` on each
    block, and removed on exit, also when training fails.
    """

    def __init__(self, blocks: list[tuple[str, nn.Module]], probs: list[float], identities: list[Identity],
                 seed: int) -> None:
        self.blocks, self.probs, self.identities = blocks, probs, identities
        self.gen = torch.Generator().manual_seed(seed)
        self.runs = [0] * len(blocks)  # training-mode calls that ran the block
        self.skips = [0] * len(blocks)  # training-mode calls that skipped it

    def _wrapped(self, i: int, block: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def forward_or_skip(*args: Any, **kwargs: Any) -> Any:
            if not block.training:
                return forward(*args, **kwargs)
            if float(torch.rand((), generator=self.gen)) < self.probs[i]:
                self.skips[i] += 1
                return self.identities[i](_block_input(args, kwargs))  # type: ignore[arg-type]
            self.runs[i] += 1
            return forward(*args, **kwargs)
        return forward_or_skip

    @contextmanager
    def installed(self) -> Iterator[BlockDropper]:
        saved = [b.__dict__.get("forward") for _, b in self.blocks]  # an instance forward someone set before
        try:
            for i, (_, block) in enumerate(self.blocks):
                block.forward = self._wrapped(i, block, block.forward)  # type: ignore[method-assign]
            yield self
        finally:
            for (_, block), old in zip(self.blocks, saved):
                if old is None:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = old  # type: ignore[method-assign]


def _probe_batch(ctx: Context, kind: str) -> Any:
    if ctx.example_inputs is not None:
        return ctx.example_inputs
    for attr in ("calib_data", "unlabeled_data", "train_data"):
        data = getattr(ctx, attr)
        batch = next(iter(data), None) if data is not None else None
        if batch is not None:
            return batch if attr == "calib_data" else split_batch(batch)[0]
    raise MethodError(f"{kind} needs Context.example_inputs (or a calib / unlabeled / train batch) to check "
                      "that each block can be skipped")


def _train(model: nn.Module, config: LayerdropTrain, ctx: Context) -> dict[str, Any]:
    """Run the objective through the one engine; the data of its record."""
    if config.objective == "task":
        loss_fn = ctx.need("loss_fn", config.kind)
        data = ctx.need("train_data", config.kind)
        r = run_kind(model, config, ctx, task_loss(loss_fn), data, what=config.kind)
        return {"steps": r.steps, "final_loss": tail_mean(r.losses), "best_metric": r.best_metric,
                "best_step": r.best_step, "evals": r.evals, "losses_every_10": [round(x, 6) for x in r.losses[::10]]}
    obj = config.objective_config()
    record = entry_for(obj).handler(model, obj, Targets(), ctx)
    return dict(record.data)


@register_method(LayerdropTrain)
def layerdrop_train(model: nn.Module, config: LayerdropTrain, targets: Targets, ctx: Context) -> Record:
    if parallel.world()[0] > 1:
        raise MethodError(f"{config.kind} does not train data-parallel: DDP needs a gradient for every parameter "
                          "each step, and a skipped block gets none")
    blocks = find_blocks(model, targets, config.kind)
    identities = probe_identities(model, blocks, _probe_batch(ctx, config.kind), config.kind)
    probs = drop_probabilities(len(blocks), config.p, config.drop_schedule)
    seed = ctx.seed if config.seed is None else config.seed
    dropper = BlockDropper(blocks, probs, identities, seed)
    with dropper.installed():
        trained = _train(model, config, ctx)
    calls = [r + s for r, s in zip(dropper.runs, dropper.skips)]
    rate = sum(dropper.skips) / max(1, sum(calls))
    return Record(
        kind=config.kind,
        data={"blocks": [n for n, _ in blocks], "p": [round(q, 6) for q in probs], "seed": seed,
              "runs": dropper.runs, "skips": dropper.skips, "objective": _KINDS.get(config.objective, "task"),
              "train": trained},
        summary={"blocks": len(blocks), "steps": trained.get("steps"), "final_loss": trained.get("final_loss"),
                 "skip_rate": round(rate, 4), "expected_skip_rate": round(sum(probs) / len(probs), 4)},
    )


@register_replay(LayerdropTrain)
def replay_layerdrop(model: nn.Module, record: Record) -> None:
    """Nothing to rebuild (only weights changed); the blocks the record names must exist."""
    names = record.data.get("blocks")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MethodError(f"train.layerdrop replay: the record's blocks must be a list of module names, got {names!r}")
    present = dict(model.named_modules())
    missing = [n for n in names if n not in present]
    if missing:
        raise MethodError(f"train.layerdrop replay: the model has no block {missing[0]!r} the record names "
                          f"({len(missing)} of {len(names)} missing)")


__all__ = ["BlockDropper", "LayerdropTrain", "drop_probabilities", "find_blocks", "layerdrop_train",
           "probe_identities", "replay_layerdrop"]
