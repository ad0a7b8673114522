"""One training engine for every kind that trains, and the recovery kinds (``train.*``).

- :class:`TrainOptions`: the loop options, a frozen config that training kinds inherit.
- :func:`train`: the loop (teacher or cache, grad accumulation, clipping, LR schedules,
  eval / patience / keep-best, exact checkpoint-resume, AMP, dropout override, step hooks).
- :class:`StepHook`: the protocol pruning schedules, regularisers and proximal steps use.
- ``train.bn_recalibrate`` (adaptive BN) and ``train.reconstruct`` (least-squares refit):
  recovery kinds that fit without an optimizer loop.
- ``train.layerdrop``: LayerDrop / stochastic depth, blocks skipped at random while an existing
  objective (``distill.embedding``, ``distill.logits`` or the task loss) trains.
"""
from __future__ import annotations

from .checkpoint import CHECKPOINT_FILE, Checkpoint
from .engine import Objective, StepHook, TrainResult, outputs_loss, task_loss, train
from .layerdrop import LayerdropTrain
from .options import TrainOptions
from .parts import split_batch
from .reconstruct import ReconstructTrain, ridge_refit
from .recovery import BnRecalibrateTrain

__all__ = [
           "CHECKPOINT_FILE",
           "BnRecalibrateTrain",
           "Checkpoint",
           "LayerdropTrain",
           "Objective",
           "ReconstructTrain",
           "StepHook",
           "TrainOptions",
           "TrainResult",
           "outputs_loss",
           "ridge_refit",
           "split_batch",
           "task_loss",
           "train",
]
