"""``distill(student, teacher, data, loss=..., steps=...)``: the keyword form of the one training engine.

Kept for scripts, benchmarks and docs that call it: every option maps onto
:class:`~slimkit.train.options.TrainOptions` and the run is :func:`slimkit.train.engine.train`
(``early_stopping_patience`` is the options' ``patience``). ``loss(student_out, teacher_out,
batch)`` is a loss on outputs; see :func:`slimkit.train.engine.outputs_loss`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core.config import ConfigError
from ..core.context import Batch, to_device
from ..core.errors import MethodError
from ..train.checkpoint import Checkpoint
from ..train.engine import LossFn, TrainResult, outputs_loss, train
from ..train.options import Amp, LrSchedule, TrainOptions
from ..train.parts import Stream as _Stream
from ..train.parts import dropout_rate, lr_lambda, split_batch
from ..train.parts import make_optimizer as _optimizer

DistillResult = TrainResult
Schedule = LrSchedule
CHECKPOINT_FILE = "distill-last.pt"


def distill(
    student: nn.Module,
    teacher: nn.Module | None,
    train_data: Iterable[Batch],
    *,
    loss: LossFn,
    steps: int,
    lr: float = 1e-3,
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
    weight_decay: float = 0.0,
    schedule: Schedule = "linear",
    warmup: int = 0,
    grad_accum: int = 1,
    clip_norm: float | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int | None = None,
    metric: str | None = None,
    mode: Literal["max", "min"] = "max",
    early_stopping_patience: int | None = None,
    keep_best: bool = False,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    seed: int = 0,
    teacher_cache: Sequence[Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "distill",
    amp: Amp = "none",
    dropout: float | None = None,
) -> TrainResult:
    """Train ``student`` in place against ``teacher`` (or ``teacher_cache``, or labels alone).

    Same semantics as :func:`slimkit.train.engine.train` with these options; with
    ``checkpoint_dir`` state is saved to ``distill-last.pt`` there every
    ``checkpoint_every`` steps and at the end, and ``resume=True`` continues from it.
    """
    try:
        options = TrainOptions(steps=steps, lr=lr, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
                               warmup=warmup, grad_accum=grad_accum, clip_norm=clip_norm,
                               eval_every=eval_every, metric=metric, mode=mode, patience=early_stopping_patience,
                               keep_best=keep_best, seed=seed, dropout=dropout, amp=amp)
    except ConfigError as exc:
        raise MethodError(f"{desc}: {exc.key} must be {exc.bare.removeprefix('expected ')}") from None
    ckpt = None if checkpoint_dir is None else Checkpoint(checkpoint_dir, checkpoint_every, resume, CHECKPOINT_FILE)
    return train(student, outputs_loss(loss), train_data, options, teacher=teacher, teacher_cache=teacher_cache,
                 eval_fn=eval_fn, device=device, progress=progress, desc=desc, checkpoint=ckpt)


__all__ = [
    "CHECKPOINT_FILE",
    "DistillResult",
    "LossFn",
    "_Stream",
    "_optimizer",
    "distill",
    "dropout_rate",
    "lr_lambda",
    "split_batch",
    "to_device",
]
