"""Registered recipe kinds that train the model against ``ctx.teacher`` with :func:`~.engine.distill`.

- ``distill.logits``: Hinton KD on classifier logits, mixed with cross-entropy on the batch
  labels when ``train_data`` yields ``(inputs, labels)`` (``alpha`` weighs the soft term).
  ``top_k`` switches to the offline teacher cache: the teacher runs once over the data
  and KD uses its top-K renormalised probabilities.
- ``distill.embedding``: align a sentence-embedding student with the teacher's embeddings
  (``1 - cos`` or MSE), e.g. after pruning MiniLM. Unlabelled inputs suffice, so it falls
  back to ``ctx.calib_data`` when there is no ``train_data``.

Both only change weights (stage ``train``), so they need no replay: ``slimkit.restore``
loads the trained weights into the structure earlier records rebuilt.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from .cache import cache_teacher_topk, kd_with
from .engine import DistillResult, distill, split_batch
from .losses import cosine_loss


@method_config
class _TrainOptions(MethodConfig):
    """Loop options shared by the distillation kinds (see :func:`slimkit.distill.engine.distill`)."""

    stage = "train"

    steps: int = 300
    lr: float = 1e-3
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = 0.0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup: int = 0
    grad_accum: int = 1
    clip_norm: float | None = None
    eval_every: int | None = None
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    patience: int | None = None
    keep_best: bool = False
    seed: int | None = None  # None: ctx.seed

    def validate(self) -> None:
        self._require(self.steps > 0, "steps", "a positive int", self.steps)
        self._require(self.lr > 0, "lr", "a positive float", self.lr)
        self._require(self.weight_decay >= 0, "weight_decay", "a float >= 0", self.weight_decay)
        self._require(0 <= self.warmup < self.steps, "warmup", "an int in [0, steps)", self.warmup)
        self._require(self.grad_accum > 0, "grad_accum", "a positive int", self.grad_accum)
        self._require(self.clip_norm is None or self.clip_norm > 0, "clip_norm", "a positive float or null",
                      self.clip_norm)
        self._require(self.eval_every is None or self.eval_every > 0, "eval_every", "a positive int or null",
                      self.eval_every)
        self._require(self.patience is None or self.patience > 0, "patience", "a positive int or null", self.patience)


@method_config
class DistillLogits(_TrainOptions):
    """Hinton KD: ``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(student, labels)``."""

    kind = "distill.logits"

    temperature: float = 4.0
    alpha: float = 0.5
    top_k: int | None = None  # cache the teacher's top-K once instead of running it every step

    def validate(self) -> None:
        super().validate()
        self._require(self.temperature > 0, "temperature", "a positive float", self.temperature)
        self._require(0.0 <= self.alpha <= 1.0, "alpha", "a float in [0, 1]", self.alpha)
        self._require(self.top_k is None or self.top_k > 0, "top_k", "a positive int or null", self.top_k)


@method_config
class DistillEmbedding(_TrainOptions):
    """Match the teacher's sentence embeddings: ``loss: cosine`` (``1 - cos``) or ``mse``."""

    kind = "distill.embedding"

    loss: Literal["cosine", "mse"] = "cosine"


def _run(model: nn.Module, config: _TrainOptions, ctx: Context, data: Any, loss: Any,
         teacher_cache: list[Any] | None = None) -> DistillResult:
    teacher = ctx.teacher
    if teacher is None:
        raise MethodError(f"{config.kind} needs Context.teacher (e.g. the uncompressed model), which is not set")
    if (config.keep_best or config.patience) and ctx.eval_fn is None:
        raise MethodError(f"{config.kind}: keep_best / patience need Context.eval_fn, which is not set")
    return distill(
        model, teacher, data, loss=loss, steps=config.steps, lr=config.lr, optimizer=config.optimizer,
        weight_decay=config.weight_decay, schedule=config.schedule, warmup=config.warmup,
        grad_accum=config.grad_accum, clip_norm=config.clip_norm, eval_fn=ctx.eval_fn,
        eval_every=config.eval_every, metric=config.metric, mode=config.mode,
        early_stopping_patience=config.patience, keep_best=config.keep_best,
        seed=ctx.seed if config.seed is None else config.seed, teacher_cache=teacher_cache,
        device=ctx.device, progress=ctx.progress, desc=config.kind,
    )


def _record(kind: str, r: DistillResult) -> Record:
    final = None if r.final_loss is None else round(r.final_loss, 6)
    data = {"steps": r.steps, "final_loss": final, "best_metric": r.best_metric, "best_step": r.best_step,
            "stopped_early": r.stopped_early, "evals": r.evals,
            "losses_every_10": [round(x, 6) for x in r.losses[::10]]}
    return Record(kind=kind, data=data, summary={"steps": r.steps, "final_loss": final, "best_metric": r.best_metric})


@register_method(DistillLogits)
def distill_logits(model: nn.Module, config: DistillLogits, targets: Targets, ctx: Context) -> Record:
    data = ctx.need("train_data", config.kind)

    def loss(s_out: torch.Tensor, t_out: Any, batch: Any) -> torch.Tensor:
        _, labels = split_batch(batch)
        return kd_with(s_out, t_out, labels, temperature=config.temperature, alpha=config.alpha)

    cache = None
    if config.top_k is not None:
        if ctx.teacher is None:
            raise MethodError(f"{config.kind} needs Context.teacher, which is not set")
        cache = cache_teacher_topk(ctx.teacher.to(ctx.device), data, config.top_k)
    return _record(config.kind, _run(model, config, ctx, data, loss, cache))


@register_method(DistillEmbedding)
def distill_embedding(model: nn.Module, config: DistillEmbedding, targets: Targets, ctx: Context) -> Record:
    data = ctx.train_data if ctx.train_data is not None else ctx.calib_data
    if data is None:
        raise MethodError(f"{config.kind} needs Context.train_data or Context.calib_data (inputs suffice), neither is set")

    def loss(s_out: torch.Tensor, t_out: torch.Tensor, batch: Any) -> torch.Tensor:
        if s_out.shape != t_out.shape:
            raise MethodError(f"{config.kind}: student embeddings {tuple(s_out.shape)} and teacher "
                              f"{tuple(t_out.shape)} differ in shape")
        return cosine_loss(s_out, t_out) if config.loss == "cosine" else F.mse_loss(s_out, t_out)

    return _record(config.kind, _run(model, config, ctx, data, loss))


__all__ = ["DistillEmbedding", "DistillLogits", "distill_embedding", "distill_logits"]
