"""Registered methods that prune while fine-tuning on ``ctx.train_data`` with ``ctx.loss_fn``.

``prune.gradual`` (AGP: magnitude with the Zhu & Gupta cubic schedule, or Narang et al.'s
threshold ramp), ``prune.movement`` (Sanh et al.: the cubic schedule on movement scores),
``prune.regrow`` (RigL at constant sparsity) and ``prune.dsd`` (dense-sparse-dense,
which ends dense). Each is a :class:`~slimkit.prune.hooks.SparsityHook` with a schedule from
:mod:`.schedules`, run as a step hook of the one training engine
(:func:`slimkit.train.engine.train`); the configs inherit its loop options
(:class:`~slimkit.train.options.TrainOptions`: ``lr``, ``optimizer``, ``schedule``, ...,
defaulting to Adam at a constant rate). ``prune.gradual`` / ``prune.movement`` can add a
sparsity penalty (``reg``: L1, group lasso, row L2 / L-inf, weight ``reg_weight``) and the
RPP reweighted-L1 proximal step (``proximal``), both as engine step hooks on the pruned weights.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import nn

from ..core import Context, Record, Targets, method_config, register_method
from ..train.engine import StepHook, task_loss
from ..train.options import LrSchedule, Optimizer, TrainOptions
from ..train.run import run_kind, tail_mean
from .hooks import PenaltyHook, ProximalHook, SparsityHook
from .regularizers import Regularizer, ReweightedL1Prox
from .schedules import DSD, Cubic, GrowPrune, NarangRamp, Schedule
from .unstructured import _check_sparsity, _sparsity_record


@method_config
class _PruneTraining(TrainOptions):
    """Loop defaults of the pruning kinds: Adam at a constant rate (what they always trained with)."""

    stage = "sparsify"

    steps: int = 1000
    optimizer: Optimizer = "adam"
    schedule: LrSchedule = "constant"


@method_config
class GradualPrune(_PruneTraining):
    """Gradual magnitude pruning (AGP): cubic (or Narang) schedule to ``sparsity`` while fine-tuning on ctx data.

    The sparsity ramps over the first ``ramp`` fraction of ``steps`` (masks updated every
    ``every`` steps); the remaining steps fine-tune at the final sparsity.
    ``sparsity_schedule: narang`` ramps a magnitude threshold instead (Narang et al. 2017:
    two slopes, the second 1.5x steeper from half the ramp) to each layer's ``sparsity``
    quantile of |w| at the start, so the sparsity reached is near ``sparsity``, not exact.
    ``reg`` adds ``reg_weight * R(w)`` over the pruned weights to the loss; ``proximal``
    soft-thresholds them after each step (RPP: reweighted L1, threshold
    ``lr * proximal_weight / (|w| + 1e-3)``).
    """

    kind = "prune.gradual"
    method: ClassVar[str] = "magnitude"

    sparsity: float = 0.9
    ramp: float = 0.7
    every: int = 10
    scope: Literal["layer", "global"] = "layer"
    initial: float = 0.0
    sparsity_schedule: Literal["cubic", "narang"] = "cubic"
    reg: Literal["none", "l1", "group_lasso", "row_l2", "row_linf"] = "none"
    reg_weight: float = 1e-4
    reg_groups: Literal["rows", "cols"] = "rows"
    proximal: bool = False
    proximal_weight: float = 1e-4

    def validate(self) -> None:
        super().validate()
        _check_sparsity(self, self.sparsity)
        self._require(0.0 <= self.initial <= self.sparsity, "initial", "a float in [0, sparsity]", self.initial)
        self._require(0.0 < self.ramp <= 1.0, "ramp", "a float in (0, 1]", self.ramp)
        self._require(self.every > 0, "every", "a positive int", self.every)
        self._require(self.reg_weight > 0, "reg_weight", "a positive float", self.reg_weight)
        self._require(self.proximal_weight > 0, "proximal_weight", "a positive float", self.proximal_weight)
        if self.sparsity_schedule == "narang":
            # the threshold ramp is per layer, from magnitudes, and starts dense
            self._require(self.method == "magnitude", "sparsity_schedule",
                          "'cubic' (movement scores are not magnitudes a threshold can ramp over)",
                          self.sparsity_schedule)
            self._require(self.scope == "layer", "scope", "'layer' with sparsity_schedule: narang", self.scope)
            self._require(self.initial == 0.0, "initial", "0 with sparsity_schedule: narang", self.initial)


@method_config
class MovementPrune(GradualPrune):
    """Movement pruning (Sanh et al. 2020): cubic schedule on scores ``S = sum -w dL/dw`` while fine-tuning."""

    kind = "prune.movement"
    method: ClassVar[str] = "movement"


def sparsity_schedule(config: GradualPrune) -> Schedule:
    """The mask schedule a gradual config asks for, over its first ``ramp`` fraction of steps."""
    ramp_steps = max(1, int(config.ramp * config.steps))
    if config.sparsity_schedule == "narang":
        # slope theta up to half the ramp, 1.5 theta after; ends at each layer's q = sparsity quantile
        return NarangRamp(start=0, ramp=ramp_steps // 2, end=ramp_steps, freq=config.every,
                          percentile=config.sparsity)
    return Cubic(final=config.sparsity, steps=ramp_steps, initial=config.initial, every=config.every)


def regularizer_hooks(config: GradualPrune, weights: list[Any]) -> list[StepHook]:
    """The penalty and proximal hooks a config asks for, on the pruned weights (proximal first, as
    :class:`SparsityHook` applies its own prox before updating masks)."""
    hooks: list[StepHook] = []
    if config.proximal:
        hooks.append(ProximalHook(weights, ReweightedL1Prox(strength=config.proximal_weight, lr=config.lr)))
    if config.reg != "none":
        hooks.append(PenaltyHook(weights, Regularizer(kind=config.reg, strength=config.reg_weight,
                                                      groups=config.reg_groups)))
    return hooks


def _gradual(model: nn.Module, config: GradualPrune, targets: Targets, ctx: Context) -> Record:
    hook = SparsityHook(model, sparsity_schedule(config), method=config.method,  # type: ignore[arg-type]
                        targets=targets, scope=config.scope)
    hooks = [*regularizer_hooks(config, hook.weights()), hook]
    result = run_kind(model, config, ctx, task_loss(ctx.need("loss_fn", config.kind)),
                      ctx.need("train_data", config.kind), what=config.kind, hooks=hooks)
    hook.finalize()
    rec = _sparsity_record(config.kind, hook.params, final_loss=tail_mean(result.losses))
    rec.data["schedule"] = [[t, round(s, 6)] for t, s in hook.history]
    return rec


register_method(GradualPrune)(_gradual)
register_method(MovementPrune)(_gradual)


@method_config
class RegrowPrune(_PruneTraining):
    """Grow-and-prune at constant sparsity (RigL): magnitude mask, then periodic drop-small / regrow-by-gradient."""

    kind = "prune.regrow"

    sparsity: float = 0.9
    every: int = 50
    alpha: float = 0.3
    end: float = 0.75  # fraction of steps after which the mask is frozen

    def validate(self) -> None:
        super().validate()
        _check_sparsity(self, self.sparsity)
        self._require(self.every > 0, "every", "a positive int", self.every)
        self._require(0.0 <= self.alpha <= 1.0, "alpha", "a float in [0, 1]", self.alpha)
        self._require(0.0 < self.end <= 1.0, "end", "a float in (0, 1]", self.end)


@register_method(RegrowPrune)
def grow_prune(model: nn.Module, config: RegrowPrune, targets: Targets, ctx: Context) -> Record:
    sched = GrowPrune(sparsity=config.sparsity, every=config.every, end=int(config.end * config.steps),
                      alpha=config.alpha)
    hook = SparsityHook(model, sched, targets=targets)
    result = run_kind(model, config, ctx, task_loss(ctx.need("loss_fn", config.kind)),
                      ctx.need("train_data", config.kind), what=config.kind, hooks=[hook])
    hook.finalize()
    return _sparsity_record(config.kind, hook.params, final_loss=tail_mean(result.losses))


@method_config
class DsdPrune(_PruneTraining):
    """Dense-sparse-dense training (Han et al. 2017): dense, then masked at ``sparsity``, then dense again at lr/10.

    The result is dense: DSD is a regulariser for accuracy, not a compression step. Its
    length is its phases: ``steps`` stays null (the engine runs ``dense_steps +
    sparse_steps``, then ``redense_steps`` with a fresh optimizer at ``lr * redense_lr_scale``).
    """

    kind = "prune.dsd"
    stage = "train"

    steps: int | None = None  # type: ignore[assignment]
    sparsity: float = 0.5
    dense_steps: int = 0
    sparse_steps: int = 500
    redense_steps: int = 500
    redense_lr_scale: float = 0.1

    def validate(self) -> None:
        super().validate()
        _check_sparsity(self, self.sparsity)
        self._require(self.steps is None, "steps", "null (prune.dsd's length is dense_steps + sparse_steps + "
                      "redense_steps)", self.steps)
        self._require(self.dense_steps >= 0 and self.sparse_steps > 0 and self.redense_steps >= 0, "sparse_steps",
                      "non-negative phase lengths with sparse_steps > 0", self.sparse_steps)
        self._require(self.redense_lr_scale > 0, "redense_lr_scale", "a positive float", self.redense_lr_scale)
        self._require(self.warmup < self.sparse_steps + self.dense_steps, "warmup",
                      "an int below dense_steps + sparse_steps", self.warmup)


@register_method(DsdPrune)
def dsd_train(model: nn.Module, config: DsdPrune, targets: Targets, ctx: Context) -> Record:
    first = config.dense_steps + config.sparse_steps
    sched = DSD(sparsity=config.sparsity, sparse_at=config.dense_steps, dense_at=first)
    hook = SparsityHook(model, sched, targets=targets)
    objective = task_loss(ctx.need("loss_fn", config.kind))
    data = ctx.need("train_data", config.kind)
    run_kind(model, config.loop(steps=first), ctx, objective, data, what=config.kind, hooks=[hook])
    mid = hook.finalize()
    losses = [float("nan")]
    if config.redense_steps:
        redense = config.loop(steps=config.redense_steps, lr=config.lr * config.redense_lr_scale,
                              warmup=min(config.warmup, config.redense_steps - 1))
        losses = run_kind(model, redense, ctx, objective, data, what=config.kind).losses
    return _sparsity_record(config.kind, hook.params, sparse_phase_sparsity=mid["sparsity"],
                            final_loss=tail_mean(losses))


__all__ = ["DsdPrune", "GradualPrune", "RegrowPrune", "MovementPrune", "regularizer_hooks", "sparsity_schedule"]
