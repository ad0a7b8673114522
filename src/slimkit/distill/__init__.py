"""Knowledge distillation: pure loss functions, student <- teacher layer maps and multi-model strategies.

Recipe kinds: ``distill.logits`` and ``distill.embedding`` (:mod:`.methods`), ``distill.intermediate``
(:mod:`.intermediate`), ``distill.multi_teacher`` / ``assistant_chain`` / ``mutual`` / ``born_again``
(:mod:`.strategy_kinds`); ``slimkit.catalog`` imports them so the registry is complete.
"""
from __future__ import annotations

from slimkit.distill.losses import (
    attention_kl,
    attention_mse,
    attention_transfer,
    cosine_loss,
    fsp_loss,
    fsp_matrix,
    hidden_mse,
    kd_loss,
    logit_mse,
    minilm_relation_loss,
    rkd_angle_loss,
    rkd_distance_loss,
)
from slimkit.distill.mapping import LearnedLayerMap, explicit_map, last_k_map, layer_pairs, uniform_map
from slimkit.distill.strategies import (
    FeatureTap,
    MultiTeacher,
    mutual_learning,
    self_distill,
    teacher_assistant_chain,
)

__all__ = [
    "FeatureTap",
    "LearnedLayerMap",
    "MultiTeacher",
    "attention_kl",
    "attention_mse",
    "attention_transfer",
    "cosine_loss",
    "explicit_map",
    "fsp_loss",
    "fsp_matrix",
    "hidden_mse",
    "kd_loss",
    "last_k_map",
    "layer_pairs",
    "logit_mse",
    "minilm_relation_loss",
    "mutual_learning",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "self_distill",
    "teacher_assistant_chain",
    "uniform_map",
]
