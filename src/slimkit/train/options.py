"""The loop options every training kind shares, as one frozen config.

:class:`TrainOptions` is a :class:`~slimkit.core.config.MethodConfig` without a kind: the
training kinds (``distill.*``, ``prune.gradual`` / ``movement`` / ``grow-prune`` / ``dsd``,
``quantize.qat``) *inherit* it, so a recipe's ``with:`` stays flat (``{steps: 800, lr: 1e-3,
warmup: 50}``) and every kind validates the loop options the same way, once. A kind may
override a default (the pruning and QAT kinds train with Adam at a constant rate, as they
always did); the engine (:func:`slimkit.train.engine.train`) reads only these fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from ..core.config import MethodConfig, method_config
from ..core.targets import check_patterns

Optimizer = Literal["adamw", "adam", "sgd"]
LrSchedule = Literal["linear", "cosine", "constant"]
Amp = Literal["none", "bf16", "fp16"]


@method_config
class TrainOptions(MethodConfig):
    """Loop options shared by every kind that trains (see :func:`slimkit.train.engine.train`).

    ``schedule`` is the learning-rate schedule (linear warmup over ``warmup`` steps, then
    constant or decay to 0). ``eval_every`` / ``metric`` / ``mode`` / ``patience`` /
    ``keep_best`` need ``Context.eval_fn``. ``seed`` None takes ``Context.seed``. ``freeze``
    holds fnmatch patterns of parameter names left untrained. ``dropout`` replaces every
    Dropout's rate while training (None: the model's own). ``amp`` is mixed precision (bf16
    autocast on CPU/CUDA, fp16 only on CUDA).
    """

    stage = "train"
    # the smallest ``steps`` a kind accepts (quantize.qat: 0 = convert the calibrated
    # quantisers without training)
    min_steps: ClassVar[int] = 1

    steps: int = 300
    lr: float = 1e-3
    optimizer: Optimizer = "adamw"
    weight_decay: float = 0.0
    schedule: LrSchedule = "linear"
    warmup: int = 0
    grad_accum: int = 1
    clip_norm: float | None = None
    eval_every: int | None = None
    metric: str | None = None
    mode: Literal["max", "min"] = "max"
    patience: int | None = None
    keep_best: bool = False
    seed: int | None = None  # None: ctx.seed
    freeze: tuple[str, ...] = ()  # parameter-name patterns (globs or re:, as in targets) left untrained
    dropout: float | None = None  # None: the model's own rates; a float: every Dropout's rate while training
    amp: Amp = "none"

    def validate(self) -> None:
        steps = self.steps
        if steps is not None:  # a kind whose length is its phases (prune.dsd) may leave it None
            self._require(steps >= self.min_steps, "steps", f"an int >= {self.min_steps}", steps)
            self._require(0 <= self.warmup < max(1, steps), "warmup", "an int in [0, steps)", self.warmup)
        else:
            self._require(self.warmup >= 0, "warmup", "an int >= 0", self.warmup)
        self._require(self.lr > 0, "lr", "a positive float", self.lr)
        self._require(self.weight_decay >= 0, "weight_decay", "a float >= 0", self.weight_decay)
        self._require(self.grad_accum > 0, "grad_accum", "a positive int", self.grad_accum)
        self._require(self.clip_norm is None or self.clip_norm > 0, "clip_norm", "a positive float or null",
                      self.clip_norm)
        self._require(self.eval_every is None or self.eval_every > 0, "eval_every", "a positive int or null",
                      self.eval_every)
        self._require(self.patience is None or self.patience > 0, "patience", "a positive int or null", self.patience)
        self._require(all(isinstance(p, str) and p for p in self.freeze), "freeze",
                      "a list of parameter-name patterns", self.freeze)
        check_patterns(self.freeze, "freeze")  # a bad re: pattern fails here, not mid-run
        self._require(self.dropout is None or 0.0 <= self.dropout < 1.0, "dropout", "a rate in [0, 1) or null",
                      self.dropout)

    def loop(self, **changes: Any) -> TrainOptions:
        """Only the loop options (a plain :class:`TrainOptions`), with ``changes`` applied and validated.

        A kind that runs the engine more than once (DSD's sparse and re-dense phases) or on
        other lengths than its ``steps`` derives each run's options here.
        """
        names = {f.name for f in dataclasses.fields(TrainOptions)}
        values = {n: getattr(self, n) for n in names}
        values.update(changes)
        return TrainOptions(**values)


__all__ = ["Amp", "LrSchedule", "Optimizer", "TrainOptions"]
