"""``attention.linformer``: keys and values projected along the sequence to ``k`` slots (Linformer).

Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity": attention's N x N
score matrix is close to low rank, so keys and values are first projected along the
sequence, ``K' = E K``, ``V' = F V`` with ``E, F`` ``[k, max_len]`` (stored transposed,
``[max_len, k]``, as ``proj_e`` / ``proj_f``), and every query
attends the ``k`` projected slots: ``O(N k d)`` instead of ``O(N^2 d)``.

Choices made here:

- ``E`` and ``F`` are learned parameters *per layer, shared across the layer's heads*
  (the paper's "headwise sharing"; ``2 k max_len`` parameters per layer), kept separate
  from each other (no key-value sharing).
- They start as average pooling over ``k`` consecutive segments of ``max_len / k``
  positions (:func:`~slimkit.attention.kernels.pool_projection`), so the converted model
  starts as attention over segment means of the trained keys and values (the identity,
  i.e. the original model, when ``k == max_len``), not from random projections; then
  distil it back (``distill.embedding`` / ``distill.intermediate``).
- Inputs may be shorter than ``max_len`` (the first ``N`` columns are used); longer ones
  are a :class:`MethodError`. Padded keys are zeroed before the projection, and slots
  that cover no real token are masked, so padding changes nothing.
- Attention dropout applies to the ``[N, k]`` probabilities as HF applies it to ``[N, N]``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import (
    Context,
    MethodConfig,
    MethodError,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from .base import ConvertedAttention, Layout, convert, option, replay
from .kernels import linformer_attend, pool_projection


@method_config
class LinformerAttention(MethodConfig):
    """Linformer: project keys and values along the sequence to k slots with learned E, F (pooling init)."""

    kind = "attention.linformer"
    stage = "train"  # a conversion, distilled back afterwards; it adds parameters, so it is no "shrink"

    # projected length (slots) of keys and values; cost per head is O(N * k * d)
    k: int = 128
    # longest input the projections cover; None: the model's max_position_embeddings
    # (ViT: patches + 1)
    max_len: int | None = None

    def validate(self) -> None:
        self._require(self.k >= 1, "k", "an int >= 1", self.k)
        self._require(self.max_len is None or self.max_len >= self.k, "max_len", f"None or an int >= k ({self.k})",
                      self.max_len)


def model_max_len(source: nn.Module, layout: Layout, kind: str) -> int:
    """The longest input ``source``'s model accepts: BERT's position table, ViT's patch count + 1."""
    cfg = getattr(source, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    image, patch = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
    if isinstance(image, int) and isinstance(patch, int) and patch > 0:
        return (image // patch) ** 2 + 1
    raise MethodError(f"{kind}: cannot tell the model's longest input from its config; set max_len")


class LinformerSelfAttention(ConvertedAttention):
    """HF self-attention whose keys and values are projected to ``slots`` positions by ``proj_e`` / ``proj_f``."""

    kind = "attention.linformer"

    def __init__(self, source: nn.Module, layout: Layout, *, slots: int, max_len: int) -> None:
        super().__init__(source, layout)
        self.slots = slots
        self.max_len = max_len
        ref = next((p for p in source.parameters() if p.is_floating_point()), None)
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else None
        e = pool_projection(slots, max_len).to(dtype=dtype, device=device)  # [max_len, slots]
        self.proj_e = nn.Parameter(e.clone())
        self.proj_f = nn.Parameter(e.clone())

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        n = k.shape[-2]
        if n > self.max_len:
            raise MethodError(f"{self.kind}: input of {n} tokens is longer than max_len={self.max_len} "
                              "the projections were built for")
        return linformer_attend(q, k, v, key_padding_mask, self.proj_e, self.proj_f, self.scaling,
                                self.attention_dropout, self.training)

    def options(self) -> dict[str, Any]:
        return {"k": self.slots, "max_len": self.max_len}

    @classmethod
    def from_options(cls, source: nn.Module, layout: Layout, options: dict[str, Any]) -> "LinformerSelfAttention":
        where = f"{cls.kind} replay"
        max_len = option(options, "max_len", int, where, lambda v: 1 <= v <= 1 << 20)
        slots = option(options, "k", int, where, lambda v: 1 <= v <= max_len)
        return cls(source, layout, slots=slots, max_len=max_len)


@register_method(LinformerAttention)
def linformer(model: nn.Module, config: LinformerAttention, targets: Targets, ctx: Context) -> Record:
    def make(index: int, source: nn.Module, layout: Layout) -> ConvertedAttention:
        max_len = config.max_len or model_max_len(source, layout, config.kind)
        if config.k > max_len:
            raise MethodError(f"{config.kind}: k={config.k} is more than max_len={max_len}")
        return LinformerSelfAttention(source, layout, slots=config.k, max_len=max_len)

    record = convert(model, targets, config.kind, make)
    record.summary["k"] = config.k
    record.summary["max_len"] = next(iter(record.data["layers"].values()))["max_len"]
    return record


@register_replay(LinformerAttention)
def replay_linformer(model: nn.Module, record: Record) -> None:
    replay(model, record, LinformerSelfAttention)


__all__ = ["LinformerAttention", "LinformerSelfAttention"]
