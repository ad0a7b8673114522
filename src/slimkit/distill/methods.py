"""Registered recipe kinds that train the model against ``ctx.teacher`` through :func:`slimkit.train.engine.train`.

- ``distill.logits``: Hinton KD on classifier logits, mixed with cross-entropy on the batch
  labels when ``train_data`` yields ``(inputs, labels)`` (``alpha`` weighs the soft term).
  ``top_k`` switches to the offline teacher cache: the teacher runs once over the data
  and KD uses its top-K renormalised probabilities.
- ``distill.embedding``: align a sentence-embedding student with the teacher's embeddings
  (``1 - cos`` or MSE), e.g. after pruning MiniLM. Unlabelled inputs suffice: ``data: auto``
  takes ``ctx.unlabeled_data`` (a task's whole unlabelled corpus), else ``train_data``, else
  ``calib_data``. ``cache_teacher`` runs the teacher once over the data instead of every
  step (the loop then costs only the student). ``hidden > 0`` adds TinyBERT-style
  intermediate supervision: each student block's token states follow a teacher block's
  (uniform mapping: student block k of S <-> teacher block ``(k+1)*T/S - 1``; per-token
  ``1 - cos`` over the attention mask), which tells a depth-pruned student what every
  block should compute, not just the pooled result.

Both only change weights (stage ``train``), so they need no replay: ``slimkit.restore``
loads the trained weights into the structure earlier records rebuilt.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method
from ..train.engine import TrainResult, outputs_loss
from ..train.options import TrainOptions
from ..train.parts import frozen_parameters, split_batch
from ..train.run import run_kind
from .cache import cache_outputs, cache_teacher_topk, kd_with
from .losses import cosine_loss
from .strategies import FeatureTap


@method_config
class LogitsDistill(TrainOptions):
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
class EmbeddingDistill(TrainOptions):
    """Match the teacher's sentence embeddings: ``loss: cosine`` (``1 - cos``) or ``mse``."""

    kind = "distill.embedding"

    loss: Literal["cosine", "mse"] = "cosine"
    data: Literal["auto", "unlabeled", "train", "calib"] = "auto"
    cache_teacher: bool = False
    hidden: float = 0.0

    def validate(self) -> None:
        super().validate()
        self._require(self.hidden >= 0, "hidden", "a float >= 0", self.hidden)


def _run(model: nn.Module, config: TrainOptions, ctx: Context, data: Any, loss: Any,
         teacher_cache: list[Any] | None = None, *, names_of: nn.Module | None = None) -> TrainResult:
    """Train ``model`` through the engine; ``freeze`` patterns name parameters of ``names_of``
    (default: ``model``), the user's model when ``model`` is a training wrapper around it."""
    teacher = ctx.teacher
    if teacher is None:
        raise MethodError(f"{config.kind} needs Context.teacher (e.g. the uncompressed model), which is not set")
    return run_kind(model, config, ctx, outputs_loss(loss), data, what=config.kind, teacher=teacher,
                    teacher_cache=teacher_cache, names_of=names_of)


def _record(kind: str, r: TrainResult) -> Record:
    final = None if r.final_loss is None else round(r.final_loss, 6)
    data = {"steps": r.steps, "final_loss": final, "best_metric": r.best_metric, "best_step": r.best_step,
            "stopped_early": r.stopped_early, "evals": r.evals,
            "losses_every_10": [round(x, 6) for x in r.losses[::10]]}
    return Record(kind=kind, data=data, summary={"steps": r.steps, "final_loss": final, "best_metric": r.best_metric})


@register_method(LogitsDistill)
def distill_logits(model: nn.Module, config: LogitsDistill, targets: Targets, ctx: Context) -> Record:
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


def _embedding_data(config: EmbeddingDistill, ctx: Context) -> Any:
    order = {"auto": ("unlabeled_data", "train_data", "calib_data"), "unlabeled": ("unlabeled_data",),
             "train": ("train_data",), "calib": ("calib_data",)}[config.data]
    for attr in order:
        if getattr(ctx, attr) is not None:
            return getattr(ctx, attr)
    names = " or ".join(f"Context.{a}" for a in order)
    raise MethodError(f"{config.kind} (data: {config.data}) needs {names} (inputs suffice); none is set")


class _WithBlocks(nn.Module):
    """``forward -> (model output, [output of each chosen block])`` (the student's keep their graph)."""

    def __init__(self, model: nn.Module, blocks: list[str]) -> None:
        super().__init__()
        self.model, self.blocks = model, blocks

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, list[torch.Tensor]]:
        with FeatureTap(self.model, self.blocks) as tap:
            out = self.model(*args, **kwargs)
        return out, [tap.outputs[b] for b in self.blocks]


def block_pairs(student: nn.Module, teacher: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the student's blocks and of the teacher blocks they follow (uniform depth mapping)."""
    from ..prune.layers import find_block_lists

    paths = find_block_lists(student, Targets())
    if len(paths) != 1 or not isinstance(teacher.get_submodule(paths[0]), nn.ModuleList):
        raise MethodError(f"distill.embedding hidden: need one block list shared by student and teacher, found {paths}")
    n_s, n_t = len(student.get_submodule(paths[0])), len(teacher.get_submodule(paths[0]))
    t_idx = [max(0, round((k + 1) * n_t / n_s) - 1) for k in range(n_s)]
    return [f"{paths[0]}.{k}" for k in range(n_s)], [f"{paths[0]}.{j}" for j in t_idx]


def token_cosine_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean ``1 - cos`` between token vectors ``[B, T, H]`` at the kept (mask != 0) positions."""
    cos = F.cosine_similarity(s, t.to(s.dtype), dim=-1)  # [B, T]
    if mask is None:
        return (1 - cos).mean()
    m = mask.to(cos.dtype)
    return ((1 - cos) * m).sum() / m.sum().clamp(min=1)


@register_method(EmbeddingDistill)
def distill_embedding(model: nn.Module, config: EmbeddingDistill, targets: Targets, ctx: Context) -> Record:
    data = _embedding_data(config, ctx)
    teacher = ctx.teacher
    if teacher is None:
        raise MethodError(f"{config.kind} needs Context.teacher (e.g. the uncompressed model), which is not set")

    def emb_loss(s_out: torch.Tensor, t_out: torch.Tensor) -> torch.Tensor:
        if s_out.shape != t_out.shape:
            raise MethodError(f"{config.kind}: student embeddings {tuple(s_out.shape)} and teacher "
                              f"{tuple(t_out.shape)} differ in shape")
        return cosine_loss(s_out, t_out) if config.loss == "cosine" else F.mse_loss(s_out, t_out)

    student, run_ctx = model, ctx
    if config.hidden > 0:
        s_blocks, t_blocks = block_pairs(model, teacher)
        student = _WithBlocks(model, s_blocks)
        # the engine evaluates what it trains: hand eval_fn the bare student, not the wrapper
        eval_fn = None if ctx.eval_fn is None else (lambda _wrapped: ctx.eval_fn(model))
        run_ctx = dataclasses.replace(ctx, teacher=_WithBlocks(teacher, t_blocks), eval_fn=eval_fn)

        def loss(s_out: Any, t_out: Any, batch: Any) -> torch.Tensor:
            inputs, _ = split_batch(batch)
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            hid = sum(token_cosine_loss(s, t, mask) for s, t in zip(s_out[1], t_out[1])) / len(s_out[1])
            return emb_loss(s_out[0], t_out[0]) + config.hidden * hid
    else:
        def loss(s_out: Any, t_out: Any, batch: Any) -> torch.Tensor:
            return emb_loss(s_out, t_out)

    cache = cache_outputs(run_ctx.teacher, data, ctx.device, progress=ctx.progress) if config.cache_teacher else None
    return _record(config.kind, _run(student, config, run_ctx, data, loss, cache, names_of=model))


__all__ = ["EmbeddingDistill", "LogitsDistill", "block_pairs", "distill_embedding", "distill_logits",
           "frozen_parameters", "token_cosine_loss"]
