"""``attention.linear``: kernelized linear attention, O(N) in sequence length.

Softmax attention ``softmax(q k^T) v`` costs ``O(N^2 d)``; replacing ``exp(q . k)`` by a
product of feature maps ``phi(q) . phi(k)`` lets the sums over keys be computed once,
``phi(q) (phi(k)^T v) / (phi(q) . sum_j phi(k_j))``: ``O(N m d)`` for ``m`` features.

- ``feature_map="favor"``: Performer's FAVOR+ positive orthogonal random features
  (Choromanski et al. 2021, "Rethinking Attention with Performers"): an unbiased
  estimate of the softmax kernel, so the converted model starts *close to* the trained
  one (closer with more ``features``) and distillation has less to recover. The ``[m, d]``
  feature matrix is drawn once per layer from ``seed + layer index`` (no redrawing) and
  saved as a buffer (``random_features``), so a restored model is bit-exact.
- ``feature_map="elu"``: ``elu(x) + 1`` (Katharopoulos et al. 2020, "Transformers are
  RNNs"); cheaper (``m = d``, no exponentials) and deterministic, but not an
  approximation of softmax: the converted model starts further away and needs more
  distillation. ``features`` is ignored.

Padded keys are excluded from both sums; there are no attention probabilities, so HF's
attention dropout has no counterpart and is not applied.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core import (
    Context,
    MethodConfig,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from .base import ConvertedAttention, Layout, convert, option, replay
from .kernels import elu_features, favor_features, linear_attend, orthogonal_features

FEATURE_MAPS = ("favor", "elu")


@method_config
class LinearAttention(MethodConfig):
    """Kernelized linear attention: Performer FAVOR+ random features or elu+1, O(N) in sequence length."""

    kind = "attention.linear"
    stage = "train"  # a conversion, distilled back afterwards

    # favor: positive orthogonal random features approximating softmax; elu: elu(x) + 1
    feature_map: Literal["favor", "elu"] = "favor"
    # m, the number of random features per head (favor only); cost per head is O(N * m * d)
    features: int = 64
    # layer i draws its features from seed + i
    seed: int = 0

    def validate(self) -> None:
        self._require(self.features >= 1, "features", "an int >= 1", self.features)
        self._require(self.seed >= 0, "seed", "an int >= 0", self.seed)


class LinearSelfAttention(ConvertedAttention):
    """HF self-attention computed as kernelized linear attention."""

    kind = "attention.linear"

    def __init__(self, source: nn.Module, layout: Layout, *, feature_map: str, features: int, seed: int) -> None:
        super().__init__(source, layout)
        self.feature_map = feature_map
        self.seed = seed
        if feature_map == "favor":
            ref = next((p for p in source.parameters() if p.is_floating_point()), None)
            w = orthogonal_features(features, self.head_size, seed)  # [m, d]
            self.register_buffer("random_features", w.to(device=ref.device if ref is not None else None))
        else:
            self.random_features = None

    @property
    def features(self) -> int:
        return int(self.random_features.shape[0]) if self.random_features is not None else self.head_size

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        if self.random_features is not None:
            qf = favor_features(q, self.random_features, self.scaling, is_query=True)  # [B, H, N, m]
            kf = favor_features(k, self.random_features, self.scaling, is_query=False, keep=key_padding_mask)
        else:
            qf, kf = elu_features(q * self.scaling ** 0.5), elu_features(k * self.scaling ** 0.5)  # [B, H, N, d]
        return linear_attend(qf, kf, v, key_padding_mask)

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feature_map": self.feature_map}
        if self.random_features is not None:
            out.update(features=self.features, seed=self.seed)
        return out

    @classmethod
    def from_options(cls, source: nn.Module, layout: Layout, options: dict[str, Any]) -> "LinearSelfAttention":
        where = f"{cls.kind} replay"
        fmap = option(options, "feature_map", str, where, lambda v: v in FEATURE_MAPS)
        if fmap == "elu":
            return cls(source, layout, feature_map="elu", features=1, seed=0)
        features = option(options, "features", int, where, lambda v: 1 <= v <= 1 << 16)
        seed = option(options, "seed", int, where, lambda v: v >= 0)
        return cls(source, layout, feature_map=fmap, features=features, seed=seed)


@register_method(LinearAttention)
def linear_attention(model: nn.Module, config: LinearAttention, targets: Targets, ctx: Context) -> Record:
    def make(index: int, source: nn.Module, layout: Layout) -> ConvertedAttention:
        return LinearSelfAttention(source, layout, feature_map=config.feature_map, features=config.features,
                                   seed=config.seed + index)

    record = convert(model, targets, config.kind, make)
    record.summary["feature_map"] = config.feature_map
    if config.feature_map == "favor":
        record.summary["features"] = config.features
    return record


@register_replay(LinearAttention)
def replay_linear(model: nn.Module, record: Record) -> None:
    replay(model, record, LinearSelfAttention)


__all__ = ["LinearAttention", "LinearSelfAttention"]
