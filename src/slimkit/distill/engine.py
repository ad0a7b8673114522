"""The distillation training loop: student learns from a frozen teacher (or from labels alone).

``distill`` is deliberately loss-agnostic: the caller passes ``loss(student_out,
teacher_out, batch) -> scalar`` (e.g. Hinton KD from :mod:`slimkit.distill.losses`), and
the loop owns everything else a real run needs: optimizer and LR schedule with warmup,
gradient accumulation and clipping, periodic evaluation with early stopping and
keep-best, and checkpoints that resume *exactly*. An interrupted run resumed from its last
checkpoint ends with bit-identical weights to an uninterrupted one, because the
checkpoint holds every piece of state the remaining steps depend on: model, optimizer,
scheduler, RNG state, step, position in the data stream, loss history and the best-so-far
snapshot.

The teacher runs under ``no_grad`` in eval mode. With ``teacher_cache`` (see
:func:`slimkit.distill.cache.cache_teacher_topk`) the teacher is not run at all: batch ``i``
of each pass over ``train_data`` gets ``teacher_cache[i]``.

Under ``torchrun`` (a process group joined with :func:`slimkit.distill.parallel.init_from_env`)
the same call trains data-parallel: see :mod:`slimkit.distill.parallel`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core.api import atomic_write
from ..core.context import Batch, call_model, to_device
from ..core.errors import MethodError
from . import parallel

LossFn = Callable[[Any, Any, Batch], torch.Tensor]
Schedule = Literal["linear", "cosine", "constant"]
Amp = Literal["none", "bf16", "fp16"]
CHECKPOINT_FILE = "distill-last.pt"


@dataclasses.dataclass
class DistillResult:
    """What a run did: optimizer steps taken, per-step losses, evaluations and the best metric seen."""

    steps: int
    losses: list[float]
    evals: list[dict[str, float]]  # each {"step": t, **metrics}
    best_metric: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    resumed_from: int | None = None  # the checkpoint's step when the run resumed

    @property
    def final_loss(self) -> float | None:
        """Mean loss of the last 10 % of steps (one step is too noisy to report)."""
        if not self.losses:
            return None
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


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


def lr_lambda(schedule: Schedule, steps: int, warmup: int) -> Callable[[int], float]:
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


def _optimizer(params: list[nn.Parameter], name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # fused: one kernel per step instead of a chain of foreach ops. Same update rule; on a
    # 2-core CPU the AdamW step of a 3-layer MiniLM student drops from 75 to 13 ms (of ~270).
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise MethodError(f"distill: optimizer must be 'adamw', 'adam' or 'sgd', got {name!r}")


class _Stream:
    """Cycles a re-iterable ``data`` forever, tracking ``(pass, index)`` so a resume can skip to it."""

    def __init__(self, data: Iterable[Batch], epoch: int = 0, index: int = 0) -> None:
        if isinstance(data, Iterator):
            raise MethodError("distill: train_data must be re-iterable (a list, EpochBatches or DataLoader), "
                              "not a one-shot iterator")
        self.data, self.epoch, self.index = data, epoch, index
        self._it = self._skip_to(index)

    def _skip_to(self, index: int) -> Iterator[Batch]:
        it = iter(self.data)
        for _ in range(index):  # deterministic data (EpochBatches, lists) replays the same prefix
            if next(it, None) is None:
                raise MethodError("distill: train_data has fewer batches than the checkpoint's position")
        return it

    def next(self) -> tuple[Batch, int]:
        """The next batch and its index within the current pass."""
        batch = next(self._it, _END)
        if batch is _END:
            if self.index == 0:
                raise MethodError("distill: train_data has no batches")
            self.epoch, self.index = self.epoch + 1, 0
            self._it = iter(self.data)
            batch = next(self._it, _END)
            if batch is _END:
                raise MethodError("distill: train_data was empty on a later pass")
        i = self.index
        self.index += 1
        return batch, i


_END = object()


class _Best:
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


def _metric_of(metrics: dict[str, float], key: str | None) -> float:
    if not isinstance(metrics, dict) or not metrics:
        raise MethodError(f"distill: eval_fn must return a non-empty dict of metrics, got {metrics!r}")
    key = key if key is not None else next(iter(metrics))
    if key not in metrics:
        raise MethodError(f"distill: eval_fn returned {sorted(metrics)}, which lacks metric {key!r}")
    return float(metrics[key])


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
) -> DistillResult:
    """Train ``student`` in place for ``steps`` optimizer steps; return a :class:`DistillResult`.

    Each step accumulates ``grad_accum`` micro-batches from ``train_data`` (cycled as needed),
    each contributing ``loss(student_out, teacher_out, batch) / grad_accum``. ``teacher_out``
    is the teacher's output on the batch inputs (``None`` without a teacher, so plain
    supervised training is the same loop), or ``teacher_cache[i]`` for the ``i``-th batch of a
    pass. ``eval_fn`` runs every ``eval_every`` steps and at the end; ``metric`` picks its key
    (default: the first) and ``mode`` whether larger is better. ``early_stopping_patience``
    stops after that many evaluations without improvement; ``keep_best`` loads the
    best-scoring weights at the end. With ``checkpoint_dir``, state is saved every
    ``checkpoint_every`` steps and at the end, and ``resume=True`` continues from it.
    Randomness is seeded from ``seed`` inside a forked RNG (the caller's RNG is untouched).

    ``amp`` is mixed precision where the hardware has it: bf16 autocast on CPUs with
    AVX512-BF16/AMX, fp16+GradScaler or bf16 on CUDA. Forwards and loss run under autocast;
    weights, gradients and optimizer state stay float32. fp16 needs loss scaling (its narrow
    exponent underflows small gradients), bf16 does not; CPU autocast has no fp16, so
    ``"fp16"`` off CUDA is an error. The scaler's scale is not checkpointed.

    ``dropout`` (a rate in ``[0, 1)``) replaces the rate of every ``nn.Dropout`` in the student
    for the run, attention-probability dropout of HF models included (it reads the module's
    ``p``), and restores the original rates afterwards; ``None`` trains with the model's own.
    A student matching a teacher's outputs has a dense target on every input and rarely
    needs dropout's regularisation: on the minilm-fast student (1,500 steps) ``dropout=0``
    raised STS-B dev from 86.10 to 86.60 and made each step about 19 % cheaper.
    """
    if steps < 1 or grad_accum < 1 or lr <= 0:
        raise MethodError(f"distill: need steps >= 1, grad_accum >= 1, lr > 0; got {steps}, {grad_accum}, {lr}")
    if schedule not in ("linear", "cosine", "constant") or mode not in ("max", "min"):
        raise MethodError(f"distill: schedule must be linear/cosine/constant and mode max/min, got {schedule!r}, {mode!r}")
    if (keep_best or early_stopping_patience) and eval_fn is None:
        raise MethodError("distill: keep_best and early_stopping_patience need an eval_fn")
    if amp not in ("none", "bf16", "fp16"):
        raise MethodError(f"distill: amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise MethodError(f"distill: dropout must be a rate in [0, 1) or None, got {dropout!r}")
    device = torch.device(device)
    if amp == "fp16" and device.type != "cuda":
        raise MethodError(f"distill: amp='fp16' needs a CUDA device (got {device}); CPU autocast is bf16, "
                          "use amp='bf16'")
    # disabled, the scaler is an exact pass-through (scale -> loss, step -> opt.step())
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    student.to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise MethodError("distill: the student has no trainable parameters")
    opt = _optimizer(params, optimizer, lr, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, steps, warmup))
    best = _Best(mode, keep_best)
    result = DistillResult(steps=0, losses=[], evals=[])
    settings = {"steps": steps, "grad_accum": grad_accum, "seed": seed}
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None

    teacher_was_training = teacher.training if teacher is not None else False
    student_was_training = student.training
    if teacher is not None and teacher_cache is None:
        teacher.to(device).eval()
    bar = None
    with dropout_rate(student, dropout), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        stream_pos = (0, 0)
        if ckpt is not None and resume and ckpt.is_file():
            stream_pos = _load_checkpoint(ckpt, student, opt, sched, best, result, settings, device)
        stream = _Stream(train_data, *stream_pos)
        world_size, rank = parallel.world()
        runner = parallel.wrap(student, device)
        if progress and rank == 0:
            from tqdm import tqdm  # type: ignore[import-untyped]

            bar = tqdm(total=steps, initial=result.steps, desc=desc, file=sys.stderr, leave=False)
        try:
            student.train()
            while result.steps < steps and not result.stopped_early:
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for k in range(grad_accum):
                    # every rank walks the same stream and keeps its own share of it
                    for r in range(world_size):
                        batch, i = stream.next()
                        if r == rank:
                            mine, mine_i = batch, i
                    batch = to_device(mine, device)
                    inputs, _ = split_batch(batch)
                    with _autocast(amp, device):
                        t_out = _teacher_out(teacher, teacher_cache, inputs, mine_i, device)
                    with parallel.no_sync(runner, last=k == grad_accum - 1):
                        with _autocast(amp, device):
                            step_loss = loss(call_model(runner, inputs), t_out, batch) / grad_accum
                        scaler.scale(step_loss).backward()  # backward outside autocast, as torch advises
                    total += float(step_loss.detach())
                total = parallel.mean_across(total)
                if clip_norm is not None:
                    scaler.unscale_(opt)  # clip the true gradients, not the loss-scaled ones
                    torch.nn.utils.clip_grad_norm_(params, clip_norm)
                scaler.step(opt)  # skips the step if fp16 gradients overflowed
                scaler.update()
                sched.step()
                result.steps += 1
                result.losses.append(total)
                t = result.steps
                if eval_fn is not None and ((eval_every and t % eval_every == 0) or t == steps):
                    _evaluate(student, eval_fn, metric, best, result, t, early_stopping_patience)
                if bar is not None:
                    bar.update(1)
                    last = result.evals[-1] if result.evals else {}
                    bar.set_postfix(loss=f"{total:.4f}", **{k: f"{v:.4f}" for k, v in last.items() if k != "step"})
                if ckpt is not None and (t == steps or result.stopped_early or (checkpoint_every and t % checkpoint_every == 0)):
                    if rank == 0:
                        _save_checkpoint(ckpt, student, opt, sched, best, result, settings, (stream.epoch, stream.index))
                    parallel.barrier()
        finally:
            if bar is not None:
                bar.close()
            student.train(student_was_training)
            if teacher is not None and teacher_cache is None:
                teacher.train(teacher_was_training)
    if keep_best and best.state is not None:
        student.load_state_dict(best.state)
    result.best_metric, result.best_step = best.value, best.step
    return result


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


def _autocast(amp: Amp, device: torch.device) -> AbstractContextManager[Any]:
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _teacher_out(teacher: nn.Module | None, cache: Sequence[Any] | None, inputs: Batch, i: int,
                 device: torch.device) -> Any:
    if cache is not None:
        if i >= len(cache):
            raise MethodError(f"distill: teacher_cache has {len(cache)} entries but train_data has more batches "
                              "per pass; build the cache from the same batches")
        return to_device(cache[i], device)
    if teacher is None:
        return None
    with torch.no_grad():
        return call_model(teacher, inputs)


def _evaluate(student: nn.Module, eval_fn: Callable[[nn.Module], dict[str, float]], metric: str | None,
              best: _Best, result: DistillResult, t: int, patience: int | None) -> None:
    """Evaluate in eval mode under its own forked RNG, so evaluation never shifts the training RNG stream."""
    student.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            metrics = eval_fn(student)
    finally:
        student.train()
    value = _metric_of(metrics, metric)
    result.evals.append({"step": float(t), **{k: float(v) for k, v in metrics.items()}})
    best.update(value, t, student)
    if patience is not None and best.bad >= patience:
        result.stopped_early = True


def _save_checkpoint(path: Path, student: nn.Module, opt: torch.optim.Optimizer, sched: Any, best: _Best,
                     result: DistillResult, settings: dict[str, Any], pos: tuple[int, int]) -> None:
    state = {
        "settings": settings, "model": student.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "best": best.to_dict(), "result": dataclasses.asdict(result), "stream": list(pos),
    }
    atomic_write(path, lambda p: torch.save(state, p))


def _load_checkpoint(path: Path, student: nn.Module, opt: torch.optim.Optimizer, sched: Any, best: _Best,
                     result: DistillResult, settings: dict[str, Any], device: torch.device) -> tuple[int, int]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a torn file cannot happen (atomic writes) but a foreign one can
        raise MethodError(f"distill: cannot read checkpoint {path}: {exc}") from exc
    if state["settings"] != settings:
        raise MethodError(f"distill: checkpoint {path} was written with {state['settings']}, this run uses "
                          f"{settings}; delete it or pass resume=False")
    student.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"].cpu())
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    best.load(state["best"])
    saved = state["result"]
    result.steps, result.losses, result.evals = saved["steps"], list(saved["losses"]), list(saved["evals"])
    result.stopped_early = saved["stopped_early"]
    result.resumed_from = saved["steps"]
    return int(state["stream"][0]), int(state["stream"][1])


__all__ = ["CHECKPOINT_FILE", "DistillResult", "distill", "dropout_rate", "lr_lambda", "split_batch"]
