"""Registered methods that prune while fine-tuning on ``ctx.train_data`` with ``ctx.loss_fn``.

``prune.gradual`` (AGP: magnitude with the Zhu & Gupta cubic schedule),
``prune.movement`` (Sanh et al.: the same schedule on movement scores),
``prune.regrow`` (RigL at constant sparsity) and ``prune.dsd`` (dense-sparse-dense,
which ends dense). Each is a :class:`~slimkit.prune.hooks.SparsityHook` with a schedule
from :mod:`.schedules` driven by :func:`~slimkit.prune.hooks.fine_tune`; a distillation
loop can drive the same hook instead.
"""
from __future__ import annotations

from typing import Literal

from torch import nn

from ..core import Context, MethodConfig, Record, Targets, method_config, register_method
from .hooks import SparsityHook, fine_tune
from .schedules import DSD, Cubic, GrowPrune
from .unstructured import _check_sparsity, _sparsity_record


@method_config
class GradualPrune(MethodConfig):
    """Gradual magnitude pruning (AGP): cubic schedule to ``sparsity`` while fine-tuning on ctx data.

    The sparsity ramps over the first ``ramp`` fraction of ``steps`` (masks updated every
    ``every`` steps); the remaining steps fine-tune at the final sparsity.
    """

    kind = "prune.gradual"
    stage = "sparsify"
    method = "magnitude"

    sparsity: float = 0.9
    steps: int = 1000
    ramp: float = 0.7
    every: int = 10
    lr: float = 1e-3
    scope: Literal["layer", "global"] = "layer"
    initial: float = 0.0

    def validate(self) -> None:
        _check_sparsity(self, self.sparsity)
        self._require(0.0 <= self.initial <= self.sparsity, "initial", "a float in [0, sparsity]", self.initial)
        self._require(self.steps > 0, "steps", "a positive int", self.steps)
        self._require(0.0 < self.ramp <= 1.0, "ramp", "a float in (0, 1]", self.ramp)
        self._require(self.every > 0, "every", "a positive int", self.every)
        self._require(self.lr > 0, "lr", "a positive float", self.lr)


@method_config
class MovementPrune(GradualPrune):
    """Movement pruning (Sanh et al. 2020): cubic schedule on scores ``S = sum -w dL/dw`` while fine-tuning."""

    kind = "prune.movement"
    method = "movement"


def _gradual(model: nn.Module, config: GradualPrune, targets: Targets, ctx: Context) -> Record:
    ramp_steps = max(1, int(config.ramp * config.steps))
    sched = Cubic(final=config.sparsity, steps=ramp_steps, initial=config.initial, every=config.every)
    hook = SparsityHook(model, sched, method=config.method, targets=targets, scope=config.scope)  # type: ignore
    losses = fine_tune(model, ctx, config.steps, hook=hook, lr=config.lr, what=config.kind)
    hook.finalize()
    rec = _sparsity_record(config.kind, hook.params, final_loss=_tail_mean(losses))
    rec.data["schedule"] = [[t, round(s, 6)] for t, s in hook.history]
    return rec


def _tail_mean(losses: list[float], frac: float = 0.1) -> float:
    tail = losses[-max(1, int(len(losses) * frac)):]
    return round(sum(tail) / len(tail), 6)


register_method(GradualPrune)(_gradual)
register_method(MovementPrune)(_gradual)


@method_config
class RegrowPrune(MethodConfig):
    """Grow-and-prune at constant sparsity (RigL): magnitude mask, then periodic drop-small / regrow-by-gradient."""

    kind = "prune.regrow"
    stage = "sparsify"

    sparsity: float = 0.9
    steps: int = 1000
    every: int = 50
    alpha: float = 0.3
    end: float = 0.75  # fraction of steps after which the mask is frozen
    lr: float = 1e-3

    def validate(self) -> None:
        _check_sparsity(self, self.sparsity)
        self._require(self.steps > 0 and self.every > 0, "steps", "positive steps and every", self.steps)
        self._require(0.0 <= self.alpha <= 1.0, "alpha", "a float in [0, 1]", self.alpha)
        self._require(0.0 < self.end <= 1.0, "end", "a float in (0, 1]", self.end)


@register_method(RegrowPrune)
def grow_prune(model: nn.Module, config: RegrowPrune, targets: Targets, ctx: Context) -> Record:
    sched = GrowPrune(sparsity=config.sparsity, every=config.every, end=int(config.end * config.steps),
                      alpha=config.alpha)
    hook = SparsityHook(model, sched, targets=targets)
    losses = fine_tune(model, ctx, config.steps, hook=hook, lr=config.lr, what=config.kind)
    hook.finalize()
    return _sparsity_record(config.kind, hook.params, final_loss=_tail_mean(losses))


@method_config
class DsdPrune(MethodConfig):
    """Dense-sparse-dense training (Han et al. 2017): dense, then masked at ``sparsity``, then dense again at lr/10.

    The result is dense: DSD is a regulariser for accuracy, not a compression step.
    """

    kind = "prune.dsd"
    stage = "train"

    sparsity: float = 0.5
    dense_steps: int = 0
    sparse_steps: int = 500
    redense_steps: int = 500
    lr: float = 1e-3
    redense_lr_scale: float = 0.1

    def validate(self) -> None:
        _check_sparsity(self, self.sparsity)
        self._require(self.dense_steps >= 0 and self.sparse_steps > 0 and self.redense_steps >= 0, "sparse_steps",
                      "non-negative phase lengths with sparse_steps > 0", self.sparse_steps)


@register_method(DsdPrune)
def dsd_train(model: nn.Module, config: DsdPrune, targets: Targets, ctx: Context) -> Record:
    first = config.dense_steps + config.sparse_steps
    sched = DSD(sparsity=config.sparsity, sparse_at=config.dense_steps, dense_at=first)
    hook = SparsityHook(model, sched, targets=targets)
    fine_tune(model, ctx, first, hook=hook, lr=config.lr, what=config.kind)
    mid = hook.finalize()
    losses = fine_tune(model, ctx, config.redense_steps, lr=config.lr * config.redense_lr_scale,
                       what=config.kind) if config.redense_steps else [float("nan")]
    return _sparsity_record(config.kind, hook.params, sparse_phase_sparsity=mid["sparsity"],
                            final_loss=_tail_mean(losses))


__all__ = ["DsdPrune", "GradualPrune", "RegrowPrune", "MovementPrune"]
