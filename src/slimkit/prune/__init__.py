"""Pruning: unstructured magnitude pruning now; structured surgery, N:M, second-order and schedules next."""
from .magnitude import MagnitudePrune, prunable_params

__all__ = ["MagnitudePrune", "prunable_params"]

from .allocation import allocate, keep_count  # noqa: E402
from .importance import (  # noqa: E402
    CRITERIA, aggregate, bn_scale_scores, entropy_scores, fpgm_scores, get_criterion, head_importance, lp_scores,
    random_scores, taylor_scores,
)

__all__ += [
    "allocate", "keep_count", "CRITERIA", "aggregate", "bn_scale_scores", "entropy_scores", "fpgm_scores",
    "get_criterion", "head_importance", "lp_scores", "random_scores", "taylor_scores",
]

from .hooks import SparsityHook, fine_tune  # noqa: E402
from .regularizers import Regularizer, ReweightedL1Prox  # noqa: E402
from .schedules import DSD, Cubic, GrowPrune, NarangRamp, OneShot, Schedule  # noqa: E402
from .gradual import DSDTrain, GradualPrune, GrowPrunePrune, MovementPrune  # noqa: E402
from .unstructured import BlockPrune, NMPrune, ObdPrune, SparseGPTPrune, WandaPrune  # noqa: E402

__all__ += [
    "SparsityHook", "fine_tune", "Regularizer", "ReweightedL1Prox", "Schedule", "OneShot", "Cubic", "NarangRamp",
    "DSD", "GrowPrune", "BlockPrune", "DSDTrain", "GradualPrune", "GrowPrunePrune", "MovementPrune", "NMPrune",
    "ObdPrune", "SparseGPTPrune", "WandaPrune",
]

from .layers import LayerDrop  # noqa: E402
from .merge import NeuronMerge, merge_plan  # noqa: E402

__all__ += ["LayerDrop", "NeuronMerge", "merge_plan"]
from .structured import ChannelPrune, HeadPrune  # noqa: E402  (structured pruning with surgery)

__all__ += ["ChannelPrune", "HeadPrune"]
from .recovery import BatchNormRecalibrate  # noqa: E402

__all__ += ["BatchNormRecalibrate"]
from .reconstruct import Reconstruct, ridge_refit  # noqa: E402

__all__ += ["Reconstruct", "ridge_refit"]
from .vocab import VocabTrim

__all__ += ["VocabTrim"]
