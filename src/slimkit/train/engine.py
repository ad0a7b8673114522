"""The one training loop every training kind runs: distillation, gradual pruning, QAT, plain fine-tuning.

:func:`train` is deliberately objective-agnostic: the caller passes
``objective(model, batch, teacher_out) -> scalar`` (:func:`outputs_loss` adapts a loss on the
model's outputs such as Hinton KD, :func:`task_loss` adapts ``Context.loss_fn``), and the
loop owns everything else a real run needs: optimizer and LR schedule with warmup, gradient
accumulation and clipping, mixed precision, a dropout override, periodic evaluation with
early stopping and keep-best, checkpoints that resume *exactly*, and :class:`StepHook` s.

A step hook is how a method rides on the loop without owning it: ``hook.loss(model)`` adds a
term to every micro-batch's loss (a sparsity regulariser) and ``hook.step(t)`` runs after
each optimizer step (a pruning schedule updating and re-applying masks, a proximal step).
:class:`slimkit.prune.hooks.SparsityHook` is one.

The teacher runs under ``no_grad`` in eval mode. With ``teacher_cache`` (see
:func:`slimkit.distill.cache.cache_teacher_topk`) the teacher is not run at all: batch ``i``
of each pass over ``data`` gets ``teacher_cache[i]``. Under ``torchrun`` (a process group
joined with :func:`slimkit.train.parallel.init_from_env`) the same call trains
data-parallel: see :mod:`slimkit.train.parallel`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..core.context import Batch, call_model, to_device
from ..core.errors import MethodError
from . import checkpoint as ckpt_io
from . import parallel
from .checkpoint import Checkpoint
from .options import TrainOptions
from .parts import (
    Best,
    Stream,
    autocast,
    dropout_rate,
    frozen_parameters,
    lr_lambda,
    make_optimizer,
    metric_of,
    split_batch,
    teacher_out,
)

Objective = Callable[[nn.Module, Batch, Any], torch.Tensor]  # (model, batch, teacher_out) -> scalar loss
LossFn = Callable[[Any, Any, Batch], torch.Tensor]  # (model output, teacher output, batch) -> scalar loss
EvalFn = Callable[[nn.Module], dict[str, float]]


@runtime_checkable
class StepHook(Protocol):
    """What a method plugs into the loop: an extra loss term and an after-step action.

    ``loss(model)`` is added to every micro-batch's loss (return None or a zero tensor for
    none); ``step(t)`` runs after optimizer step ``t`` (0-based), before the next
    ``zero_grad``, so it sees this step's gradients. Hooks run in the order given.
    """

    def loss(self, model: nn.Module) -> torch.Tensor | None: ...

    def step(self, t: int) -> None: ...


@dataclasses.dataclass
class TrainResult:
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


def outputs_loss(loss: LossFn) -> Objective:
    """An objective from a loss on outputs: the model runs on the batch's inputs (labels split off)."""
    def objective(model: nn.Module, batch: Batch, t_out: Any) -> torch.Tensor:
        inputs, _ = split_batch(batch)
        return loss(call_model(model, inputs), t_out, batch)
    return objective


def task_loss(loss_fn: Callable[[nn.Module, Batch], torch.Tensor]) -> Objective:
    """An objective from ``Context.loss_fn(model, batch)``, which runs the model itself."""
    def objective(model: nn.Module, batch: Batch, t_out: Any) -> torch.Tensor:
        return loss_fn(model, batch)
    return objective


def train(
    model: nn.Module,
    objective: Objective,
    data: Iterable[Batch],
    options: TrainOptions,
    *,
    teacher: nn.Module | None = None,
    teacher_cache: Sequence[Any] | None = None,
    eval_fn: EvalFn | None = None,
    hooks: Sequence[StepHook] = (),
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "train",
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``options.steps`` optimizer steps; return a :class:`TrainResult`.

    Each step accumulates ``grad_accum`` micro-batches from ``data`` (cycled as needed), each
    contributing ``(objective(model, batch, teacher_out) + sum(hook.loss(model))) / grad_accum``.
    ``teacher_out`` is the teacher's output on the batch inputs (None without a teacher), or
    ``teacher_cache[i]`` for the ``i``-th batch of a pass. ``eval_fn`` runs every
    ``eval_every`` steps and at the end (``metric`` picks its key, ``mode`` whether larger is
    better, ``patience`` stops after that many evaluations without improvement, ``keep_best``
    loads the best weights at the end). Randomness is seeded from ``options.seed`` (0 when
    None) inside a forked RNG: the caller's RNG is untouched. Parameters matching
    ``options.freeze`` stay fixed and are trainable again afterwards.

    ``amp`` is mixed precision where the hardware has it: bf16 autocast on CPUs with
    AVX512-BF16/AMX, fp16+GradScaler or bf16 on CUDA; weights, gradients and optimizer state
    stay float32. ``dropout`` replaces the rate of every ``nn.Dropout`` for the run and
    restores the original rates afterwards.
    """
    o = options
    if o.steps is None or o.steps < 1:
        raise MethodError(f"{desc}: the engine needs steps >= 1, got {o.steps}")
    if (o.keep_best or o.patience) and eval_fn is None:
        raise MethodError(f"{desc}: keep_best and patience need an eval_fn (Context.eval_fn)")
    device = torch.device(device)
    if o.amp == "fp16" and device.type != "cuda":
        raise MethodError(f"{desc}: amp='fp16' needs a CUDA device (got {device}); CPU autocast is bf16, "
                          "use amp='bf16'")
    if checkpoint is not None and hooks:
        raise MethodError(f"{desc}: checkpoints do not hold step-hook state (masks, scores); "
                          "train with hooks without a checkpoint")
    hooks = list(hooks)
    for h in hooks:
        if not isinstance(h, StepHook):
            raise MethodError(f"{desc}: a step hook needs loss(model) and step(t) methods; got {type(h).__name__}")
    frozen = frozen_parameters(model, o.freeze, desc)
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _run(model, objective, data, o, teacher, teacher_cache, eval_fn, hooks, device, progress, desc,
                    checkpoint)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _run(model: nn.Module, objective: Objective, data: Iterable[Batch], o: TrainOptions,
         teacher: nn.Module | None, teacher_cache: Sequence[Any] | None, eval_fn: EvalFn | None,
         hooks: list[StepHook], device: torch.device, progress: bool, desc: str,
         checkpoint: Checkpoint | None) -> TrainResult:
    steps, accum, seed = o.steps, o.grad_accum, 0 if o.seed is None else o.seed
    # disabled, the scaler is an exact pass-through (scale -> loss, step -> opt.step())
    scaler = torch.amp.GradScaler(device.type, enabled=o.amp == "fp16")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MethodError(f"{desc}: the model has no trainable parameters")
    opt = make_optimizer(params, o.optimizer, o.lr, o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, steps, o.warmup))
    best = Best(o.mode, o.keep_best)
    result = TrainResult(steps=0, losses=[], evals=[])
    settings = {"steps": steps, "grad_accum": accum, "seed": seed}
    ckpt = checkpoint.path if checkpoint is not None else None

    live_teacher = teacher is not None and teacher_cache is None
    teacher_was_training = teacher.training if teacher is not None else False
    model_was_training = model.training
    if live_teacher:
        teacher.to(device).eval()  # type: ignore[union-attr]
    bar = None
    with dropout_rate(model, o.dropout), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        stream_pos = (0, 0)
        if ckpt is not None and checkpoint.resume and ckpt.is_file():  # type: ignore[union-attr]
            stream_pos = ckpt_io.load(ckpt, model, opt, sched, best, result, settings, device, desc)
        stream = Stream(data, *stream_pos, what=desc)
        world_size, rank = parallel.world()
        runner = parallel.wrap(model, device)
        if progress and rank == 0:
            from ..core.progress import Progress

            bar = Progress(steps, desc, initial=result.steps)
        try:
            model.train()
            while result.steps < steps and not result.stopped_early:
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for k in range(accum):
                    # every rank walks the same stream and keeps its own share of it
                    for r in range(world_size):
                        batch, i = stream.next()
                        if r == rank:
                            mine, mine_i = batch, i
                    batch = to_device(mine, device)
                    with autocast(o.amp, device):
                        t_out = None if teacher is None and teacher_cache is None else \
                            teacher_out(teacher, teacher_cache, split_batch(batch)[0], mine_i, device, desc)
                    with parallel.no_sync(runner, last=k == accum - 1):
                        with autocast(o.amp, device):
                            step_loss = objective(runner, batch, t_out)
                            for h in hooks:
                                extra = h.loss(model)
                                if extra is not None:
                                    step_loss = step_loss + extra
                            step_loss = step_loss / accum
                        scaler.scale(step_loss).backward()  # backward outside autocast, as torch advises
                    total += float(step_loss.detach())
                total = parallel.mean_across(total)
                if o.clip_norm is not None:
                    scaler.unscale_(opt)  # clip the true gradients, not the loss-scaled ones
                    torch.nn.utils.clip_grad_norm_(params, o.clip_norm)
                scaler.step(opt)  # skips the step if fp16 gradients overflowed
                scaler.update()
                sched.step()
                for h in hooks:
                    h.step(result.steps)
                result.steps += 1
                result.losses.append(total)
                t = result.steps
                if eval_fn is not None and ((o.eval_every and t % o.eval_every == 0) or t == steps):
                    _evaluate(model, eval_fn, o, best, result, t, desc)
                if bar is not None:
                    bar.update(1)
                    last = result.evals[-1] if result.evals else {}
                    bar.set_postfix(loss=f"{total:.4f}", **{k: f"{v:.4f}" for k, v in last.items() if k != "step"})
                if ckpt is not None and (t == steps or result.stopped_early
                                         or (checkpoint.every and t % checkpoint.every == 0)):  # type: ignore[union-attr]
                    if rank == 0:
                        ckpt_io.save(ckpt, model, opt, sched, best, result, settings, (stream.epoch, stream.index))
                    parallel.barrier()
        finally:
            if bar is not None:
                bar.close()
            model.train(model_was_training)
            if live_teacher:
                teacher.train(teacher_was_training)  # type: ignore[union-attr]
    if o.keep_best and best.state is not None:
        model.load_state_dict(best.state)
    result.best_metric, result.best_step = best.value, best.step
    return result


def _evaluate(model: nn.Module, eval_fn: EvalFn, o: TrainOptions, best: Best, result: TrainResult, t: int,
              desc: str) -> None:
    """Evaluate in eval mode under its own forked RNG, so evaluation never shifts the training RNG stream."""
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            metrics = eval_fn(model)
    finally:
        model.train()
    value = metric_of(metrics, o.metric, desc)
    result.evals.append({"step": float(t), **{k: float(v) for k, v in metrics.items()}})
    best.update(value, t, model)
    if o.patience is not None and best.bad >= o.patience:
        result.stopped_early = True


__all__ = ["Checkpoint", "EvalFn", "LossFn", "Objective", "StepHook", "TrainResult", "outputs_loss", "task_loss",
           "train"]
