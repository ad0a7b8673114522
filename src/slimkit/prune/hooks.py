"""Pruning as step hooks of the training engine: a sparsity schedule, a penalty, a proximal step.

The training engine (:func:`slimkit.train.engine.train`) drives them through its
:class:`~slimkit.train.engine.StepHook` protocol; any hand-written loop can drive a schedule
with three calls::

    hook = SparsityHook(model, Cubic(final=0.9, steps=800, every=50))
    for t, batch in enumerate(batches):
        loss = task_loss(model, batch) + hook.loss()   # regulariser term (0 without one)
        opt.zero_grad(); loss.backward(); opt.step()
        hook.step(t)            # after optimizer.step(), before the next zero_grad()
    hook.finalize()             # zeros stay in the weights; the hook lets go of the masks

Masks live in the hook (a dict of bool tensors), not as module buffers, so the model's
state dict and structure are unchanged and ``slimkit.save`` stores the zeros as CSR.
``step`` re-applies the masks after every optimizer step, because optimizers (Adam
momentum, weight decay) move pruned weights off zero.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..core import Context, MethodError, Targets
from .magnitude import prunable_params
from .masks import global_topk_masks, sparsity_of, topk_mask
from .regularizers import Regularizer, ReweightedL1Prox
from .schedules import GrowPrune, Schedule

Scoring = Literal["magnitude", "movement"]

DEFAULT_TARGETS = Targets(types=("Conv2d", "Linear"))


class SparsityHook:
    """Keeps masks on the targeted weights and updates them on a schedule.

    - ``method="magnitude"``: score |w| (with a rising schedule this is AGP / Zhu & Gupta).
    - ``method="movement"``: score ``S = sum_t -w * dL/dw`` (Sanh et al. 2020), accumulated
      in :meth:`step` from ``p.grad``. A pruned weight is zero, so its score is frozen
      until the mask is recomputed (hard movement pruning without a separate dense copy).
    - A :class:`GrowPrune` schedule drops small-|w| active weights and regrows
      large-|grad| inactive ones (RigL); it needs ``p.grad`` at update steps.

    ``scope`` is ``"layer"`` (every tensor reaches the target) or ``"global"`` (one
    threshold). ``regularizer`` adds a loss term via :meth:`loss`; ``prox`` is a proximal
    step applied after each optimizer step (e.g. :class:`ReweightedL1Prox`).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule,
        *,
        method: Scoring = "magnitude",
        targets: Targets | None = None,
        scope: Literal["layer", "global"] = "layer",
        include_bias: bool = False,
        regularizer: Regularizer | None = None,
        prox: ReweightedL1Prox | None = None,
    ) -> None:
        if method not in ("magnitude", "movement"):
            raise MethodError(f"SparsityHook: method must be 'magnitude' or 'movement', got {method!r}")
        if scope not in ("layer", "global"):
            raise MethodError(f"SparsityHook: scope must be 'layer' or 'global', got {scope!r}")
        self.params = prunable_params(model, targets or DEFAULT_TARGETS, include_bias)
        if not self.params:
            raise MethodError("SparsityHook: the targets select no weight to prune")
        self.schedule = schedule
        self.method = method
        self.scope = scope
        self.regularizer = regularizer
        self.prox = prox
        self.masks: dict[str, torch.Tensor] | None = None  # name -> bool keep-mask; None = dense
        self.scores: dict[str, torch.Tensor] = {}  # movement scores
        self._ref: dict[str, float] = {}  # Narang: per-layer reference magnitude q
        if method == "movement":
            self.scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params}
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each mask update

    # -- the three calls a training loop makes -------------------------------------------------
    def weights(self) -> list[torch.Tensor]:
        return [p for _, p in self.params]

    def loss(self, model: nn.Module | None = None) -> torch.Tensor:
        """The regulariser term on the hooked weights (a zero tensor without a regulariser)."""
        if self.regularizer is None:
            return torch.zeros((), device=self.params[0][1].device)
        return self.regularizer(self.weights())

    def step(self, t: int) -> None:
        """Call after ``optimizer.step()`` at training step ``t`` (0-based)."""
        if self.method == "movement":
            with torch.no_grad():
                for n, p in self.params:
                    if p.grad is not None:
                        self.scores[n] -= (p.detach() * p.grad.detach()).float()
        if self.prox is not None:
            self.prox.step(self.weights(), t)
        if self.schedule.updates_at(t):
            self._update(t)
        self.apply_masks()

    def finalize(self) -> dict[str, object]:
        """Apply the masks one last time, forget them, and return the per-tensor sparsity reached."""
        self.apply_masks()
        self.masks = None
        return self.report()

    # -- internals ----------------------------------------------------------------------------
    def apply_masks(self) -> None:
        if self.masks is None:
            return
        with torch.no_grad():
            for n, p in self.params:
                p.mul_(self.masks[n].to(p.dtype))

    def _scores(self) -> list[torch.Tensor]:
        if self.method == "movement":
            return [self.scores[n] for n, _ in self.params]
        return [p.detach().abs() for _, p in self.params]

    def _update(self, t: int) -> None:
        sched = self.schedule
        if isinstance(sched, GrowPrune) and self.masks is not None:
            self._grow_prune(sched.drop_fraction(t))
        elif sched.kind == "threshold":
            self._threshold_update(t)
        else:
            target = sched.target(t)
            if target <= 0.0:
                self.masks = None  # dense phase (DSD re-dense): pruned weights retrain from zero
            else:
                scores = self._scores()
                if self.scope == "global":
                    masks = global_topk_masks(scores, target)
                else:
                    masks = [topk_mask(s, target) for s in scores]
                self.masks = {n: m for (n, _), m in zip(self.params, masks)}
        self.history.append((t, self.current_target_sparsity()))

    def _threshold_update(self, t: int) -> None:
        """Narang et al.: prune |w| < eps_t * q_layer; masks only ever shrink."""
        pct = getattr(self.schedule, "percentile", 0.9)
        if not self._ref:
            self._ref = {n: float(torch.quantile(p.detach().abs().float().reshape(-1), pct)) for n, p in self.params}
        rel = self.schedule.target(t)
        new = {}
        for n, p in self.params:
            keep = p.detach().abs() >= rel * self._ref[n]
            new[n] = keep if self.masks is None else keep & self.masks[n]
        self.masks = new

    def _grow_prune(self, frac: float) -> None:
        """RigL update: per tensor, drop ``k`` smallest active |w|, regrow ``k`` largest inactive |grad|."""
        assert self.masks is not None
        for n, p in self.params:
            keep = self.masks[n].reshape(-1)
            active = int(keep.sum())
            k = min(int(frac * active), keep.numel() - active)
            if k <= 0 or p.grad is None:
                continue
            w = p.detach().abs().reshape(-1)
            drop = torch.topk(torch.where(keep, w, torch.full_like(w, float("inf"))), k, largest=False).indices
            g = p.grad.detach().abs().reshape(-1).clone()
            g[keep] = -1.0  # only inactive weights can grow ...
            g[drop] = -1.0  # ... and not the ones dropped just now
            grow = torch.topk(g, k).indices
            new = keep.clone()
            new[drop] = False
            new[grow] = True
            with torch.no_grad():
                p.view(-1)[grow] = 0.0  # regrown connections start from zero (RigL)
            self.masks[n] = new.reshape(p.shape)

    def current_target_sparsity(self) -> float:
        if self.masks is None:
            return 0.0
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(1, total)

    def report(self) -> dict[str, object]:
        """``{"params": {name: {sparsity, numel}}, "sparsity": overall}`` from the weights' actual zeros."""
        layers = {n: {"sparsity": round(sparsity_of(p), 6), "numel": p.numel()} for n, p in self.params}
        total = sum(p.numel() for _, p in self.params)
        zeros = sum(p.numel() - int(torch.count_nonzero(p)) for _, p in self.params)
        return {"params": layers, "sparsity": zeros / max(1, total), "numel": total}


class PenaltyHook:
    """Engine step hook adding ``regularizer(weights)`` to every micro-batch's loss (L1, group lasso, ...)."""

    def __init__(self, weights: list[torch.Tensor], regularizer: Regularizer) -> None:
        self.weights, self.regularizer = weights, regularizer

    def loss(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.regularizer(self.weights)

    def step(self, t: int) -> None:
        """Nothing to do after a step: the penalty acts through the gradient."""


class ProximalHook:
    """Engine step hook applying a proximal step (RPP reweighted-L1 soft-threshold) after each optimizer step."""

    def __init__(self, weights: list[torch.Tensor], prox: ReweightedL1Prox) -> None:
        self.weights, self.prox = weights, prox

    def loss(self, model: nn.Module | None = None) -> None:
        return None

    def step(self, t: int) -> None:
        self.prox.step(self.weights, t)


def fine_tune(
    model: nn.Module,
    ctx: Context,
    steps: int,
    *,
    hook: SparsityHook | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    what: str = "fine_tune",
) -> list[float]:
    """Train ``model`` for ``steps`` Adam steps (constant rate) on ``ctx.train_data`` with ``ctx.loss_fn`` (+ ``hook``).

    A thin call into :func:`slimkit.train.engine.train` (seeded from ``ctx.seed``). The data
    is cycled if ``steps`` exceeds one pass. Returns the loss of every step.
    """
    from ..train.engine import task_loss, train
    from ..train.options import TrainOptions

    loss_fn = ctx.need("loss_fn", what)
    data = ctx.need("train_data", what)
    if steps == 0:
        return []
    options = TrainOptions(steps=steps, lr=lr, weight_decay=weight_decay, optimizer="adam", schedule="constant",
                           seed=ctx.seed)
    result = train(model, task_loss(loss_fn), data, options, hooks=() if hook is None else (hook,),
                   device=ctx.device, progress=ctx.progress, desc=what)
    return result.losses


__all__ = ["DEFAULT_TARGETS", "PenaltyHook", "ProximalHook", "SparsityHook", "fine_tune"]
