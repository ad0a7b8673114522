"""The small pieces the training loop is made of: optimizer, LR schedule, data stream, best-tracking.

Each is a function or a small class with no knowledge of the loop around it, so the loop in
:mod:`slimkit.train.engine` reads as the sequence of steps it is.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal

import torch
from torch import nn

from ..core.context import Batch, call_model, to_device
from ..core.errors import MethodError
from ..core.targets import name_matches
from .options import Amp, LrSchedule


def split_batch(batch: Batch) -> tuple[Batch, torch.Tensor | None]:
    """``(inputs, labels)`` of a training batch.

    A 2-tuple/list is ``(inputs, labels)`` (the Context convention for ``train_data``); a
    dict may carry ``"labels"`` next to the model's keyword inputs; anything else is inputs
    only.
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        rest = {k: v for k, v in batch.items() if k != "labels"}
        return rest, batch["labels"]
    return batch, None


def lr_lambda(schedule: LrSchedule, steps: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier at step ``t``: linear warmup over ``warmup`` steps, then constant or decay to 0.

    The first step already uses ``1 / warmup`` of the rate (not 0), so no step is wasted.
    """
    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        if schedule == "constant":
            return 1.0
        frac = (t - warmup) / max(1, steps - warmup)  # 0 -> 1 over the decay phase
        if schedule == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return f


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused Adam/AdamW kernel applies: floating params on CPU or CUDA."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_optimizer(params: list[nn.Parameter], name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The one place an optimizer is built (every training kind goes through here).

    fused: one kernel per step instead of a chain of foreach ops, so the optimizer reads and
    writes each parameter's state once. Same update rule (measured: docs/training.md#what-the-loop-does).
    """
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise MethodError(f"train: optimizer must be 'adamw', 'adam' or 'sgd', got {name!r}")


_END = object()


class Stream:
    """Cycles a re-iterable ``data`` forever, tracking ``(pass, index)`` so a resume can skip to it."""

    def __init__(self, data: Iterable[Batch], epoch: int = 0, index: int = 0, what: str = "train") -> None:
        if isinstance(data, Iterator):
            raise MethodError(f"{what}: train_data must be re-iterable (a list, EpochBatches or DataLoader), "
                              "not a one-shot iterator")
        self.data, self.epoch, self.index, self.what = data, epoch, index, what
        self._it = self._skip_to(index)

    def _skip_to(self, index: int) -> Iterator[Batch]:
        it = iter(self.data)
        for _ in range(index):  # deterministic data (EpochBatches, lists) replays the same prefix
            if next(it, None) is None:
                raise MethodError(f"{self.what}: train_data has fewer batches than the checkpoint's position")
        return it

    def next(self) -> tuple[Batch, int]:
        """The next batch and its index within the current pass."""
        batch = next(self._it, _END)
        if batch is _END:
            if self.index == 0:
                raise MethodError(f"{self.what}: Context.train_data has no batches")
            self.epoch, self.index = self.epoch + 1, 0
            self._it = iter(self.data)
            batch = next(self._it, _END)
            if batch is _END:
                raise MethodError(f"{self.what}: train_data was empty on a later pass")
        i = self.index
        self.index += 1
        return batch, i


class Best:
    """Tracks the best metric, the evals since it improved, and (for keep_best) a weight snapshot."""

    def __init__(self, mode: Literal["max", "min"], keep: bool) -> None:
        self.mode, self.keep = mode, keep
        self.value: float | None = None
        self.step: int | None = None
        self.bad = 0
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, value: float, step: int, model: nn.Module) -> None:
        better = self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        if better:
            self.value, self.step, self.bad = value, step, 0
            if self.keep:
                self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step, "bad": self.bad, "state": self.state}

    def load(self, d: dict[str, Any]) -> None:
        self.value, self.step, self.bad, self.state = d["value"], d["step"], d["bad"], d["state"]


def metric_of(metrics: dict[str, float], key: str | None, what: str) -> float:
    """The tracked value of an eval: ``metrics[key]``, or the first metric when ``key`` is None."""
    if not isinstance(metrics, dict) or not metrics:
        raise MethodError(f"{what}: eval_fn must return a non-empty dict of metrics, got {metrics!r}")
    key = key if key is not None else next(iter(metrics))
    if key not in metrics:
        raise MethodError(f"{what}: eval_fn returned {sorted(metrics)}, which lacks metric {key!r}")
    return float(metrics[key])


@contextmanager
def dropout_rate(model: nn.Module, p: float | None) -> Iterator[None]:
    """Within the block every ``nn.Dropout`` of ``model`` drops with rate ``p`` (``None``: unchanged)."""
    if p is None:
        yield
        return
    mods = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    saved = [m.p for m in mods]
    try:
        for m in mods:
            m.p = p
        yield
    finally:
        for m, old in zip(mods, saved):
            m.p = old


def autocast(amp: Amp, device: torch.device) -> AbstractContextManager[Any]:
    """Mixed-precision region for forwards and loss (a no-op for ``amp="none"``)."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def teacher_out(teacher: nn.Module | None, cache: Sequence[Any] | None, inputs: Batch, i: int,
                device: torch.device, what: str) -> Any:
    """The teacher's output for batch ``i`` of a pass: from ``cache``, a no-grad forward, or None."""
    if cache is not None:
        if i >= len(cache):
            raise MethodError(f"{what}: teacher_cache has {len(cache)} entries but train_data has more batches "
                              "per pass; build the cache from the same batches")
        return to_device(cache[i], device)
    if teacher is None:
        return None
    with torch.no_grad():
        return call_model(teacher, inputs)


def frozen_parameters(model: nn.Module, patterns: tuple[str, ...], what: str) -> list[nn.Parameter]:
    """Trainable parameters whose names match ``patterns`` (each pattern must match one).

    Freezing e.g. a student's word embeddings keeps every token, also those the training
    corpus never shows, in the teacher's input space, and skips the optimizer update of the
    largest table (about a quarter of a MiniLM step).
    """
    if not patterns:
        return []
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out: list[nn.Parameter] = []
    for pat in patterns:
        hits = [p for n, p in named if name_matches(pat, n)]  # globs and re:, as in targets
        if not hits:
            raise MethodError(f"{what}: freeze pattern {pat!r} matches no trainable parameter "
                              f"(names look like {[n for n, _ in named[:3]]})")
        out += [p for p in hits if all(p is not q for q in out)]
    return out


__all__ = ["Best", "Stream", "autocast", "dropout_rate", "frozen_parameters", "lr_lambda", "make_optimizer", "metric_of", "split_batch",
           "teacher_out"]
