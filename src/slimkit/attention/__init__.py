"""Attention conversions for trained encoders: the computation changes, the HF interface stays.

- :mod:`.base`: find BERT-family / ViT-style self-attention modules, swap them for a
  :class:`~.base.ConvertedAttention` subclass, replay the swap on restore.
- ``attention.linformer`` (:mod:`.linformer`, :class:`LinformerAttention`): keys and values
  projected along the sequence to ``k`` slots (learned, pooling init).
- ``attention.linear`` (:mod:`.linear`, :class:`LinearAttention`): kernelized linear
  attention, Performer FAVOR+ random features or elu+1.
- the math of both lives in :mod:`.kernels`.
- ``attention.token_prune`` (:mod:`.token_prune`, math in :mod:`.token_math`): later blocks run
  on fewer tokens (PoWER-BERT style), the output is full length again.
- ``attention.window`` (:mod:`.window`, :class:`WindowAttention`): sliding-window attention
  with global tokens, computed blockwise in O(n*w) (math in :mod:`.window_math`).
- :mod:`.positions`: extend a model's learned absolute position embeddings for long inputs.
"""
from .base import ConvertedAttention, Layout, convert, find_attention, key_padding_mask, replay
from .linear import LinearAttention, LinearSelfAttention
from .linformer import LinformerAttention, LinformerSelfAttention

__all__ = ["ConvertedAttention", "Layout", "convert", "find_attention", "key_padding_mask", "replay",
           "LinformerAttention", "LinformerSelfAttention", "LinearAttention", "LinearSelfAttention"]
