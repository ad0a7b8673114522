"""Offline teacher cache: run the teacher once, keep only its top-K classes per sample.

A large teacher often costs more per step than the student being trained, and KD runs
revisit the same batches for many epochs. Caching the teacher's top-K (renormalised) log
probabilities removes the teacher from the loop and shrinks the stored outputs from C to K
numbers per row; KD is then computed over those K classes only (the classes outside the
top-K carry almost no teacher mass, which is what makes the approximation cheap).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.context import Batch, call_model, to_device
from ..core.errors import MethodError
from .losses import kd_loss

T = TypeVar("T")


@dataclasses.dataclass
class TopK:
    """The teacher's top-K classes of one batch: ``indices`` ``[B, K]`` and renormalised ``log_probs`` ``[B, K]``.

    ``log_probs`` are log-softmax over the K kept logits (so ``log_probs.exp().sum(-1) == 1``);
    being logits up to a per-row constant, they give the same softmax at any temperature as
    the teacher's K raw logits would.
    """

    indices: torch.Tensor  # [B, K] int64
    log_probs: torch.Tensor  # [B, K] float

    def to(self, device: torch.device | str) -> TopK:
        return TopK(self.indices.to(device), self.log_probs.to(device))

    @property
    def probs(self) -> torch.Tensor:  # [B, K], rows sum to 1
        return self.log_probs.exp()


def topk_of(logits: torch.Tensor, k: int) -> TopK:
    """Top-``k`` of ``logits`` ``[B, C]`` with log-probabilities renormalised over the kept ``k``."""
    if logits.dim() != 2:
        raise MethodError(f"teacher cache: expected teacher logits [B, C], got {tuple(logits.shape)}")
    if not 1 <= k <= logits.shape[1]:
        raise MethodError(f"teacher cache: k must be in [1, {logits.shape[1]}], got {k}")
    values, indices = logits.float().topk(k, dim=1)  # [B, K] each
    return TopK(indices=indices, log_probs=F.log_softmax(values, dim=1))


def cache_teacher_topk(teacher: nn.Module, batches: Iterable[Batch], k: int) -> list[TopK]:
    """Run ``teacher`` (eval mode, no grad) once over ``batches``; one :class:`TopK` per batch, in order.

    Batches may be ``(inputs, labels)`` pairs (only the inputs reach the teacher). Pass the
    result as ``distill(..., teacher_cache=...)`` with the same ``batches`` as ``train_data``:
    entry ``i`` belongs to the ``i``-th batch of each pass, so the data must yield the same
    samples in the same order on every pass (e.g. one-epoch ``EpochBatches``).
    """
    return teacher_pass(teacher, batches, lambda inputs: topk_of(call_model(teacher, inputs), k).to("cpu"))


def teacher_pass(teacher: nn.Module, batches: Iterable[Batch], keep: Callable[[Batch], T]) -> list[T]:
    """``[keep(inputs of batch) for batch in batches]`` with ``teacher`` in eval mode under no_grad
    (its training flag restored after); ``(inputs, labels)`` batches pass only their inputs."""
    from .engine import split_batch

    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            return [keep(split_batch(batch)[0]) for batch in batches]
    finally:
        teacher.train(was_training)


def _compact(x: Any) -> Any:
    """Float tensors of rank >= 3 (token states) kept as fp16 on CPU, the rest as float on CPU."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        return x.half() if x.is_floating_point() and x.dim() >= 3 else x
    if isinstance(x, (list, tuple)):
        return type(x)(_compact(v) for v in x)
    if isinstance(x, dict):
        return {k: _compact(v) for k, v in x.items()}
    return x


def cache_outputs(teacher: nn.Module, batches: Iterable[Batch], device: str | torch.device = "cpu", *,
                  progress: bool = False) -> list[Any]:
    """Run ``teacher`` once over ``batches`` and keep its outputs (one entry per batch, in order).

    For ``distill(..., teacher_cache=...)`` with the same batches, which must then come in
    the same order on every pass (a list, not a reshuffling stream). Token-level states
    (rank >= 3 float tensors) are stored in fp16 to halve the memory; losses upcast them.
    A batch object that occurs more than once in the list (an oversampled subset) runs
    through the teacher once and its entries share the output.
    """
    if not isinstance(batches, Sequence):
        raise MethodError("cache_teacher needs the data as a sequence of batches (the same order every pass), "
                          f"got {type(batches).__name__}")
    dev = torch.device(device)
    teacher.to(dev)
    items: Iterable[Batch] = batches
    if progress:
        from ..core.progress import track

        items = track(batches, "teacher cache", total=len(batches))
    seen: dict[int, Any] = {}  # id(inputs) -> output: a batch object listed again is not re-run

    def keep(inputs: Batch) -> Any:
        key = id(inputs)
        if key not in seen:
            seen[key] = _compact(call_model(teacher, to_device(inputs, dev)))
        return seen[key]

    return teacher_pass(teacher, items, keep)


def kd_with(student_logits: torch.Tensor, teacher_out: torch.Tensor | TopK, labels: torch.Tensor | None = None,
            *, temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton KD against full teacher logits or a cached :class:`TopK`.

    With a ``TopK`` the soft term is :func:`~slimkit.distill.losses.kd_loss` between the
    student's logits at the cached classes and the cached log-probabilities (KD restricted
    to those K classes); the hard-label term, when ``labels`` are given, still uses all of
    the student's logits.
    """
    if not isinstance(teacher_out, TopK):
        return kd_loss(student_logits, teacher_out, labels, temperature=temperature, alpha=alpha)
    s_k = student_logits.gather(1, teacher_out.indices)  # [B, K]
    soft = kd_loss(s_k, teacher_out.log_probs.to(student_logits.dtype), temperature=temperature)
    if labels is None:
        return soft
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_with: alpha must be in [0, 1], got {alpha}")
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


__all__ = ["TopK", "cache_outputs", "cache_teacher_topk", "kd_with", "teacher_pass", "topk_of"]
