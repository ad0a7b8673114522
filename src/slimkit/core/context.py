"""Runtime handles a method may need: data, teacher, loss/eval functions, device, seed.

Configs hold data only; everything that is an object at run time goes here, so the
same recipe can run against different data or devices.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .errors import MethodError

Batch = Any  # a tensor, a tuple of tensors or a dict of tensors, as the model's forward takes it


@dataclasses.dataclass(kw_only=True)
class Context:
    """Runtime inputs for methods.

    - ``calib_data``: batches for calibration / importance estimation (forward only).
    - ``train_data``: batches ``(inputs, target)`` or dicts for fine-tuning and distillation.
    - ``eval_data``: batches for evaluation inside training loops.
    - ``loss_fn(model, batch) -> scalar tensor``: the training loss; needed by gradient-based
      importance (Taylor, OBD, movement) and fine-tuning.
    - ``eval_fn(model) -> dict[str, float]``: the task metric.
    - ``example_inputs``: one batch to trace or profile the model with.
    """

    calib_data: Iterable[Batch] | None = None
    train_data: Iterable[Batch] | None = None
    eval_data: Iterable[Batch] | None = None
    teacher: nn.Module | None = None
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None
    example_inputs: Batch | None = None
    device: str | torch.device = "cpu"
    seed: int = 0
    progress: bool = True
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def need(self, attr: str, method: str) -> Any:
        """Return ``self.<attr>`` or raise a clear error saying which method needs it."""
        value = getattr(self, attr)
        if value is None:
            raise MethodError(f"{method} needs Context.{attr}, which is not set")
        return value


def call_model(model: nn.Module, batch: Batch) -> Any:
    """Call ``model`` on a batch given as tensor, tuple/list of tensors or dict of kwargs."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def forward_batches(model: nn.Module, batches: Iterable[Batch]) -> int:
    """Run ``model`` over ``batches`` in eval mode without gradients (for calibration hooks).

    The training flag is restored afterwards; returns the number of batches run.
    """
    was_training = model.training
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch)
                n += 1
    finally:
        model.train(was_training)
    return n
