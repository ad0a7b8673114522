"""Checkpoints that resume a training run *exactly*.

The file holds every piece of state the remaining steps depend on: model, optimizer,
scheduler, RNG state, step, position in the data stream, loss history and the best-so-far
snapshot, so an interrupted run resumed from its last checkpoint ends with bit-identical
weights to an uninterrupted one. Writes are atomic; loading uses ``weights_only=True``
(a checkpoint is data, never code).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.api import atomic_write
from ..core.errors import MethodError
from .parts import Best

CHECKPOINT_FILE = "train-last.pt"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where and how often a run saves its state: a runtime handle, not part of a recipe.

    State is written to ``dir / file`` every ``every`` steps (None: only at the end) and
    when the run stops; with ``resume`` a run finding that file continues from it.
    """

    dir: str | os.PathLike[str]
    every: int | None = None
    resume: bool = True
    file: str = CHECKPOINT_FILE

    @property
    def path(self) -> Path:
        return Path(self.dir) / self.file


def save(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, best: Best, result: Any,
         settings: dict[str, Any], pos: tuple[int, int]) -> None:
    state = {
        "settings": settings, "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(), "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "best": best.to_dict(), "result": dataclasses.asdict(result), "stream": list(pos),
    }
    atomic_write(path, lambda p: torch.save(state, p))


def load(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, best: Best, result: Any,
         settings: dict[str, Any], device: torch.device, what: str) -> tuple[int, int]:
    """Restore everything :func:`save` wrote into the live objects; return the data-stream position."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a torn file cannot happen (atomic writes) but a foreign one can
        raise MethodError(f"{what}: cannot read checkpoint {path}: {exc}") from exc
    if state["settings"] != settings:
        raise MethodError(f"{what}: checkpoint {path} was written with {state['settings']}, this run uses "
                          f"{settings}; delete it or pass resume=False")
    model.load_state_dict(state["model"])
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


__all__ = ["CHECKPOINT_FILE", "Checkpoint", "load", "save"]
