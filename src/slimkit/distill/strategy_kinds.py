"""Recipe kinds for the distillation strategies of :mod:`slimkit.distill.strategies`.

- ``distill.multi_teacher``: learn from the average of several teachers, each named by a
  model spec (``context`` = ``Context.teacher``, ``zoo:NAME``, ``hf:PATH``, or the folder
  of a saved slimkit artifact).
- ``distill.assistant_chain``: TAKD; the teacher first teaches one or more assistants
  (an int: a copy of the teacher keeping that many evenly spaced blocks; a string: a model
  spec), the last assistant teaches the model.
- ``distill.mutual``: Deep Mutual Learning; the model and its peers learn together from
  the labels and from each other. No teacher runs.
- ``distill.born_again``: born-again networks; generation 0 is the model distilled from
  ``Context.teacher``, each later generation a fresh copy of the model as it was before the
  step, distilled from the previous generation; the model ends with the last one's weights.

All compare the models' *outputs* with ``loss``: ``kd`` (Hinton KD, mixed with
cross-entropy by ``alpha`` when batches carry class labels), ``mse`` (logit regression) or
``cosine`` (sentence embeddings). Every stage trains through ``distill.methods._run``, so
the loop options (``steps``, ``lr``, ``schedule``, ``freeze``, ``keep_best``, ...) behave as
in ``distill.logits``; helper models (assistants, peers, earlier generations) are
discarded after the step, and only the model's weights change (stage ``train``).
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, apply, method_config, register_method
from ..train.options import TrainOptions
from .engine import DistillResult
from .mapping import uniform_map
from .methods import _record, _run
from .objectives import (
    DataChoice,
    OutputLoss,
    class_labels,
    is_path_spec,
    load_model_spec,
    output_loss,
    output_tensor,
    step_data,
)
from .strategies import MultiTeacher

_SCHEMES = ("zoo", "hf", "py")


def _spec_ok(spec: Any, extra: tuple[str, ...] = ("context",)) -> bool:
    """``context`` (and ``extra`` words), ``zoo:`` / ``hf:`` / ``py:`` specs, or a folder path."""
    if not isinstance(spec, str):
        return False
    scheme, _, rest = spec.partition(":")
    return spec in extra or (scheme in _SCHEMES and bool(rest)) or is_path_spec(spec)


@method_config
class _OutputOptions(TrainOptions):
    """Loop options plus the output-level loss the strategy kinds share."""

    loss: OutputLoss = "kd"
    temperature: float = 4.0
    alpha: float = 0.5  # kd with class labels: weight of the soft term (1 - alpha: cross-entropy)
    data: DataChoice = "auto"  # auto: train_data first for kd (labels), the unlabelled corpus first otherwise

    def validate(self) -> None:
        super().validate()
        self._require(self.temperature > 0, "temperature", "a positive float", self.temperature)
        self._require(0.0 <= self.alpha <= 1.0, "alpha", "a float in [0, 1]", self.alpha)

    def loss_fn(self) -> Any:
        return output_loss(self.loss, temperature=self.temperature, alpha=self.alpha, kind=self.kind)

    def batches(self, ctx: Context) -> Any:
        return step_data(self.data, ctx, self.kind, labels_first=self.loss == "kd")


def _summary(r: DistillResult) -> dict[str, Any]:
    return {"steps": r.steps, "final_loss": None if r.final_loss is None else round(r.final_loss, 6),
            "best_metric": r.best_metric}


def _helper_config(config: _OutputOptions, steps: int) -> _OutputOptions:
    """Loop options for a helper model's stage: its own step count, no early stopping or
    keep-best (they score the model, not the helper) and no freeze (the patterns name the model)."""
    return dataclasses.replace(config, steps=steps, warmup=min(config.warmup, steps - 1), eval_every=None,
                               patience=None, keep_best=False, freeze=())


# --------------------------------------------------------------------------- multi-teacher


@method_config
class MultiTeacherDistill(_OutputOptions):
    """Distil from an ensemble: the weighted average of several teachers' outputs (Hinton et al. 2015)."""

    kind = "distill.multi_teacher"

    teachers: tuple[str, ...] = ()  # model specs: context (Context.teacher), zoo:NAME, hf:PATH
    weights: tuple[float, ...] = ()  # one per teacher (normalised); empty: equal
    average: Literal["logits", "probs"] = "logits"

    def validate(self) -> None:
        super().validate()
        self._require(len(self.teachers) >= 2, "teachers", "at least two model specs (context, zoo:NAME, hf:PATH)",
                      self.teachers)
        bad = [s for s in self.teachers if not _spec_ok(s)]
        self._require(not bad, "teachers", "model specs: context, zoo:NAME, hf:PATH or py:module:factory", bad)
        self._require(not self.weights or len(self.weights) == len(self.teachers), "weights",
                      f"one weight per teacher ({len(self.teachers)}) or none", self.weights)
        self._require(all(w > 0 for w in self.weights), "weights", "positive numbers", self.weights)
        self._require(self.average == "logits" or self.loss == "kd", "average",
                      "logits unless loss is kd (probs averages class probabilities)", self.average)


@register_method(MultiTeacherDistill)
def distill_multi_teacher(model: nn.Module, config: MultiTeacherDistill, targets: Targets, ctx: Context) -> Record:
    teachers = [load_model_spec(s, ctx, config.kind) for s in config.teachers]
    ensemble = MultiTeacher(teachers, config.weights or None, average=config.average)
    result = _run(model, config, dataclasses.replace(ctx, teacher=ensemble), config.batches(ctx), config.loss_fn())
    rec = _record(config.kind, result)
    rec.data.update(teachers=list(config.teachers), weights=[round(w, 6) for w in ensemble.weights])
    return rec


# --------------------------------------------------------------------------- teacher-assistant chain


@method_config
class AssistantChainDistill(_OutputOptions):
    """TAKD (Mirzadeh et al. 2020): teacher -> assistant(s) -> model, each stage distilled in turn."""

    kind = "distill.assistant_chain"

    assistants: tuple[int | str, ...] = ()  # int: teacher copy keeping that many blocks; str: a model spec
    assistant_steps: int | None = None  # steps of each assistant's stage (None: steps)

    def validate(self) -> None:
        super().validate()
        self._require(bool(self.assistants), "assistants",
                      "a non-empty list of block counts (ints) or model specs (strings)", self.assistants)
        bad = [a for a in self.assistants if not (_spec_ok(a) if isinstance(a, str) else a >= 1)]
        self._require(not bad, "assistants", "ints >= 1 or model specs (context, zoo:NAME, hf:PATH)", bad)
        self._require(self.assistant_steps is None or self.assistant_steps > 0, "assistant_steps",
                      "a positive int or null", self.assistant_steps)


def _shallow_teacher(teacher: nn.Module, n_blocks: int, ctx: Context, kind: str) -> nn.Module:
    """A copy of ``teacher`` keeping ``n_blocks`` evenly spaced blocks (the last one included), by ``prune.layers``."""
    from ..prune.layers import LayerPrune, find_block_lists

    try:
        (path,) = find_block_lists(teacher, Targets())
    except (MethodError, ValueError) as exc:
        raise MethodError(f"{kind}: assistant {n_blocks}: cannot find the teacher's block list to shorten ({exc}); "
                          "name the assistant by a model spec instead") from exc
    n = len(teacher.get_submodule(path))
    if n_blocks >= n:
        raise MethodError(f"{kind}: assistant {n_blocks}: the teacher has only {n} blocks; an assistant must be smaller")
    keep = set(uniform_map(n_blocks, n))
    drop = LayerPrune(drop=tuple(i for i in range(n) if i not in keep))
    return apply(teacher, drop, Targets(), Context(device=ctx.device, progress=False, seed=ctx.seed))


@register_method(AssistantChainDistill)
def distill_assistant_chain(model: nn.Module, config: AssistantChainDistill, targets: Targets, ctx: Context) -> Record:
    teacher = ctx.need("teacher", config.kind)
    data, loss = config.batches(ctx), config.loss_fn()
    stage = _helper_config(config, config.assistant_steps or config.steps)
    current, stages = teacher, []
    for a in config.assistants:
        helper = (_shallow_teacher(teacher, a, ctx, config.kind) if isinstance(a, int)
                  else copy.deepcopy(load_model_spec(a, ctx, config.kind)))  # trained in place: never the original
        r = _run(helper, stage, dataclasses.replace(ctx, teacher=current, eval_fn=None), data, loss)
        stages.append({"assistant": a, "params": sum(p.numel() for p in helper.parameters()), **_summary(r)})
        current = helper
    result = _run(model, config, dataclasses.replace(ctx, teacher=current), data, loss)
    rec = _record(config.kind, result)
    rec.data["assistants"] = stages
    return rec


# --------------------------------------------------------------------------- mutual learning


@method_config
class MutualDistill(_OutputOptions):
    """Deep Mutual Learning (Zhang et al. 2018): the model and its peers learn from labels and each other."""

    kind = "distill.mutual"

    peers: tuple[str, ...] = ("self",)  # self (a copy of the model), context (a copy of the teacher), or a spec
    temperature: float = 1.0

    def validate(self) -> None:
        super().validate()
        self._require(bool(self.peers), "peers", "at least one peer spec (self, context, zoo:NAME, hf:PATH)",
                      self.peers)
        bad = [s for s in self.peers if not _spec_ok(s, ("self", "context"))]
        self._require(not bad, "peers", "peer specs: self, context, zoo:NAME, hf:PATH or py:module:factory", bad)
        self._require(self.loss == "kd", "loss", "kd (mutual learning mixes cross-entropy and KL)", self.loss)


class _Cohort(nn.Module):
    """The model and its peers as one module, so one engine run steps all of them together."""

    def __init__(self, model: nn.Module, peers: list[nn.Module]) -> None:
        super().__init__()
        self.model, self.peers = model, nn.ModuleList(peers)

    def forward(self, *args: Any, **kwargs: Any) -> list[Any]:
        return [self.model(*args, **kwargs), *(p(*args, **kwargs) for p in self.peers)]


class _NoTeacher:
    """An endless teacher cache of ``None``: the peers teach each other, so no teacher runs."""

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, i: int) -> None:
        return None


def _mutual_loss(config: MutualDistill) -> Any:
    from .losses import kd_loss

    def loss(outs: list[Any], _t: Any, batch: Any) -> torch.Tensor:
        logits = [output_tensor(o, config.kind) for o in outs]  # each [..., C]
        labels = class_labels(batch, logits[0])
        if labels is None:
            raise MethodError(f"{config.kind}: batches need integer class labels ((inputs, labels) or a dict with "
                              "'labels'); mutual learning learns from them and from the peers")
        total = logits[0].new_zeros(())
        for i, s in enumerate(logits):  # the detached targets keep each peer's gradient its own
            kd = sum(kd_loss(s, o.detach(), temperature=config.temperature) for j, o in enumerate(logits) if j != i)
            ce = torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1), ignore_index=-100)
            total = total + config.alpha * kd / (len(logits) - 1) + (1.0 - config.alpha) * ce
        return total
    return loss


@register_method(MutualDistill)
def distill_mutual(model: nn.Module, config: MutualDistill, targets: Targets, ctx: Context) -> Record:
    peers = [copy.deepcopy(model if s == "self" else load_model_spec(s, ctx, config.kind)) for s in config.peers]
    cohort = _Cohort(model, peers)
    eval_fn = None if ctx.eval_fn is None else (lambda _cohort: ctx.eval_fn(model))
    run_ctx = dataclasses.replace(ctx, teacher=nn.Identity(), eval_fn=eval_fn)  # a placeholder: the cache stands in
    result = _run(cohort, config, run_ctx, config.batches(ctx), _mutual_loss(config), _NoTeacher(),  # type: ignore[arg-type]
                  names_of=model)
    rec = _record(config.kind, result)
    rec.data["peers"] = list(config.peers)
    return rec


# --------------------------------------------------------------------------- born-again networks


@method_config
class BornAgainDistill(_OutputOptions):
    """Born-again networks (Furlanello et al. 2018): the model re-distilled into fresh copies of itself."""

    kind = "distill.born_again"

    generations: int = 2  # generation 0 learns from Context.teacher, each later one from the one before

    def validate(self) -> None:
        super().validate()
        self._require(self.generations >= 1, "generations", "an int >= 1", self.generations)


@register_method(BornAgainDistill)
def distill_born_again(model: nn.Module, config: BornAgainDistill, targets: Targets, ctx: Context) -> Record:
    teacher = ctx.need("teacher", config.kind)
    data, loss = config.batches(ctx), config.loss_fn()
    init = copy.deepcopy(model)  # every generation starts from the model as it was before the step
    current, gens = model, []
    for g in range(config.generations):
        if g > 0:
            teacher, current = current, copy.deepcopy(init)
        r = _run(current, config, dataclasses.replace(ctx, teacher=teacher), data, loss, names_of=current)
        gens.append({"generation": g, **_summary(r)})
    if current is not model:
        model.load_state_dict(current.state_dict())
    rec = _record(config.kind, r)
    rec.data["generations"] = gens
    return rec


__all__ = ["AssistantChainDistill", "BornAgainDistill", "MultiTeacherDistill", "MutualDistill"]
