"""How a registered kind hands its config and the Context to the engine (one path for every kind).

A kind builds its objective and hooks; :func:`run_kind` fills in what the Context holds
(seed, device, progress bar, eval_fn) and the error messages name the kind.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..core import Context, MethodError
from ..core.context import Batch
from .engine import Objective, StepHook, TrainResult, train
from .options import TrainOptions


def run_kind(model: nn.Module, options: TrainOptions, ctx: Context, objective: Objective, data: Iterable[Batch], *,
             what: str, teacher: nn.Module | None = None,
             teacher_cache: Sequence[Any] | None = None, hooks: Sequence[StepHook] = (),
             names_of: nn.Module | None = None) -> TrainResult:
    """Train ``model`` with the loop options of ``options`` (a kind's config, or options derived from it).

    ``what`` (the kind) labels errors and the progress bar.
    ``seed: null`` takes ``ctx.seed``. ``freeze`` patterns name parameters of ``names_of``
    (default ``model``), the user's model when ``model`` is a training wrapper around it.
    ``ctx.eval_fn``, when set, evaluates every ``eval_every`` steps and at the end.
    """
    opts = options.loop()
    if opts.seed is None:
        opts = opts.loop(seed=ctx.seed)
    if (opts.keep_best or opts.patience) and ctx.eval_fn is None:
        raise MethodError(f"{what}: keep_best / patience need Context.eval_fn, which is not set")
    if names_of is not None and names_of is not model and opts.freeze:
        prefix = next((n for n, m in model.named_modules() if m is names_of), None)
        if prefix is None:
            raise MethodError(f"{what}: the trained wrapper does not contain the model to freeze")
        opts = opts.loop(freeze=tuple(f"{prefix}.{p}" if prefix else p for p in opts.freeze))
    return train(model, objective, data, opts, teacher=teacher, teacher_cache=teacher_cache, eval_fn=ctx.eval_fn,
                 hooks=hooks, device=ctx.device, progress=ctx.progress, desc=what)


def tail_mean(losses: list[float], frac: float = 0.1) -> float | None:
    """Mean of the last ``frac`` of the losses, rounded for a record (None without losses)."""
    if not losses:
        return None
    tail = losses[-max(1, int(len(losses) * frac)):]
    return round(sum(tail) / len(tail), 6)


__all__ = ["run_kind", "tail_mean"]
