"""Runtime handles a method may need: data, teacher, loss/eval functions, device, seed.

Configs hold data only; everything that is an object at run time goes here, so the
same recipe can run against different data or devices.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .errors import MethodError

Batch = Any  # a tensor, a tuple of tensors or a dict of tensors, as the model's forward takes it


@dataclasses.dataclass(kw_only=True)
class Context:
    """Runtime inputs for methods.

    - ``calib_data``: batches for calibration / importance estimation (forward only).
    - ``train_data``: batches ``(inputs, target)`` or dicts for fine-tuning and distillation.
    - ``unlabeled_data``: input-only batches of a larger unlabelled corpus (e.g. every
      training sentence a task has), for distillation that needs no labels; may be a lazy
      sequence that builds its batches on first use.
    - ``eval_data``: batches for evaluation inside training loops.
    - ``loss_fn(model, batch) -> scalar tensor``: the training loss; needed by gradient-based
      importance (Taylor, OBD, movement) and fine-tuning.
    - ``eval_fn(model) -> dict[str, float]``: the task metric.
    - ``example_inputs``: one batch to trace or profile the model with.
    """

    calib_data: Iterable[Batch] | None = None
    train_data: Iterable[Batch] | None = None
    unlabeled_data: Iterable[Batch] | None = None
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


def batch_args(batch: Batch) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` a model is called with: a dict is keyword arguments, a tuple/list
    positional ones, anything else the single positional argument."""
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def forward_params(model: nn.Module) -> dict[str, inspect.Parameter]:
    """The named parameters of ``model.forward`` (through HF's decorators), or {} if unknown."""
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}


def call_model(model: nn.Module, batch: Batch) -> Any:
    """Call ``model`` on a batch given as tensor, tuple/list of tensors or dict of kwargs."""
    args, kwargs = batch_args(batch)
    return model(*args, **kwargs)


def select_output(out: Any, output: str = "auto") -> torch.Tensor:
    """The one tensor of a model's output that exporters and output checks compare.

    ``out`` may be a tensor, a dict or HF ``ModelOutput`` (a dict whose unset fields are
    absent), or a tuple/list. ``output="auto"`` picks ``logits`` if present, else
    ``last_hidden_state``, else the first tensor; a key name picks that field of a dict
    output, a decimal index that item of a tuple output. A model's full output (KV caches,
    attention maps, hidden-state lists) is not one tensor, so an exported graph serves one.
    """
    if isinstance(out, torch.Tensor):
        if output not in ("auto", "0"):
            raise MethodError(f"the model returns one tensor; output {output!r} does not exist (use 'auto')")
        return out
    if isinstance(out, dict):
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        if output == "auto":
            for key in ("logits", "last_hidden_state"):
                if key in tensors:
                    return tensors[key]
            if tensors:
                return next(iter(tensors.values()))
        elif output in tensors:
            return tensors[output]
        raise MethodError(f"the model's {type(out).__name__} output has no tensor {output!r}; "
                          f"its tensors: {sorted(tensors)}")
    if isinstance(out, (tuple, list)):
        idx = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
        if output == "auto" and idx:
            return out[idx[0]]
        if output.isdigit() and int(output) in idx:
            return out[int(output)]
        raise MethodError(f"the model's {len(out)}-item {type(out).__name__} output has no tensor at {output!r}; "
                          f"tensor items: {idx}")
    raise MethodError(f"cannot find a tensor in a model output of type {type(out).__name__}")


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor of a model output (a tensor, a dict or HF ``ModelOutput``, a tuple or
    list), or None when it holds none. Unlike :func:`select_output` it prefers no field: hooks
    and default losses take whatever comes first."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return next((v for v in out if isinstance(v, torch.Tensor)), None)
    return None


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a tensor / tuple / list / dict (or an object with ``.to``) to ``device``."""
    if isinstance(obj, torch.Tensor) or hasattr(obj, "to"):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def forward_batches(model: nn.Module, batches: Iterable[Batch], hooks: Iterable[Any] = (),
                    run: Callable[[nn.Module, Batch], Any] | None = None) -> int:
    """Run ``model`` over ``batches`` in eval mode without gradients (for calibration hooks).

    ``hooks`` are the handles of the calibration hooks the caller registered; they are
    removed afterwards, as the training flag is restored, even when a forward fails.
    ``run(model, batch)`` replaces the plain forward (:func:`call_model`), e.g. a task's
    ``loss_fn`` for training batches whose (inputs, labels) layout only it knows.
    Returns the number of batches run.
    """
    was_training = model.training
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                (run or call_model)(model, batch)
                n += 1
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return n
