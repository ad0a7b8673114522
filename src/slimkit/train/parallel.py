"""Multi-process data-parallel training (``torchrun --nproc_per_node=N``).

The engine stays one loop: under an initialised process group it wraps the student in
``DistributedDataParallel`` and every rank walks the *same* batch stream, taking every
N-th micro-batch (rank r takes micro-batch ``k * N + r``). DDP averages the gradients of
the N ranks, so one optimizer step sees exactly the micro-batches that a single process
with ``grad_accum * N`` would see: a 2-process run matches a 1-process run with twice the
accumulation up to float summation order (tested with a real ``torchrun``).

Backends: gloo on CPU, NCCL on CUDA (chosen by :func:`init_from_env`).
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the current process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment (no-op outside torchrun).

    Returns ``(world_size, rank)``. The backend defaults to NCCL when CUDA is available and
    gloo otherwise.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return world()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    return world()


def wrap(student: nn.Module, device: torch.device) -> nn.Module:
    """The student as DDP when a multi-process group is active, else unchanged."""
    size, _ = world()
    if size <= 1:
        return student
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(student, device_ids=ids)


def no_sync(model: nn.Module, last: bool) -> AbstractContextManager[None]:
    """Skip DDP's gradient all-reduce on every micro-batch but the last of a step."""
    if isinstance(model, nn.parallel.DistributedDataParallel) and not last:
        return model.no_sync()
    return nullcontext()


def mean_across(value: float) -> float:
    """The mean of ``value`` over the ranks (the value itself in one process)."""
    size, _ = world()
    if size <= 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / size


def barrier() -> None:
    if world()[0] > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly (all ranks meet, then the group is destroyed).

    Exiting with a live gloo group can abort a rank in the C++ destructors ("terminate
    called without an active exception"), which torchrun reports as a failed run. With
    torch 2.13 that can still happen at interpreter exit on a loaded machine (about 1 run
    in 10 seen here); a script whose results are saved can end with ``os._exit(0)`` after
    this call, as ``tests/distill/ddp_worker.py`` does.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
