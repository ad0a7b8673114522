"""Pruning: what to remove and how to remove it for real.

* importance criteria (:mod:`.importance`) and allocation (:mod:`.allocation`) are pure scores and counts;
* structured pruning (:mod:`.structured`, :mod:`.layers`, :mod:`.merge`) finds coupled groups in the graph
  (:mod:`.graph`, :mod:`.propagate`) and shrinks the layers physically (:mod:`.surgery`);
* unstructured, N:M, block and second-order pruning (:mod:`.magnitude`, :mod:`.unstructured`) and the
  training-time schedules (:mod:`.gradual`, :mod:`.schedules`, :mod:`.hooks`, :mod:`.regularizers`)
  make weights sparse, stored compressed; they train through :mod:`slimkit.train`.
"""
from .magnitude import MagnitudePrune, prunable_params

__all__ = ["MagnitudePrune", "prunable_params"]

from .allocation import allocate, keep_count  # noqa: E402
from .importance import (  # noqa: E402
    CRITERIA,
    aggregate,
    bn_scale_scores,
    entropy_scores,
    fpgm_scores,
    get_criterion,
    head_importance,
    lp_scores,
    random_scores,
    taylor_scores,
)

__all__ += [
    "allocate", "keep_count", "CRITERIA", "aggregate", "bn_scale_scores", "entropy_scores", "fpgm_scores",
    "get_criterion", "head_importance", "lp_scores", "random_scores", "taylor_scores",
]

from .gradual import DsdPrune, GradualPrune, MovementPrune, RegrowPrune  # noqa: E402
from .hooks import PenaltyHook, ProximalHook, SparsityHook, fine_tune  # noqa: E402
from .regularizers import Regularizer, ReweightedL1Prox  # noqa: E402
from .schedules import DSD, Cubic, GrowPrune, NarangRamp, OneShot, Schedule  # noqa: E402
from .unstructured import BlockPrune, NMPrune, ObdPrune, SparseGPTPrune, WandaPrune  # noqa: E402

__all__ += [
    "PenaltyHook", "ProximalHook", "SparsityHook", "fine_tune", "Regularizer", "ReweightedL1Prox", "Schedule", "OneShot", "Cubic", "NarangRamp",
    "DSD", "GrowPrune", "BlockPrune", "DsdPrune", "GradualPrune", "RegrowPrune", "MovementPrune", "NMPrune",
    "ObdPrune", "SparseGPTPrune", "WandaPrune",
]

from .layers import LayerPrune  # noqa: E402
from .merge import MergePrune, merge_plan  # noqa: E402

__all__ += ["LayerPrune", "MergePrune", "merge_plan"]
from .structured import ChannelPrune, HeadPrune  # noqa: E402  (structured pruning with surgery)

__all__ += ["ChannelPrune", "HeadPrune"]
# train.bn_recalibrate and train.reconstruct live in slimkit.train (BnRecalibrateTrain, Reconstruct)
from .vocab import VocabPrune  # noqa: E402

__all__ += ["VocabPrune"]
