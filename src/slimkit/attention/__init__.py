"""Attention conversions for trained encoders: the computation changes, the HF interface stays.

- :mod:`.base`: find BERT-family / ViT-style self-attention modules, swap them for a
  :class:`~.base.ConvertedAttention` subclass, replay the swap on restore.
- ``attention.window`` (:mod:`.window`, :class:`WindowAttention`): sliding-window attention
  with global tokens, computed blockwise in O(n*w) (math in :mod:`.window_math`).
- :mod:`.positions`: extend a model's learned absolute position embeddings for long inputs.
"""
from .base import ConvertedAttention, Layout, convert, find_attention, key_padding_mask, replay

__all__ = ["ConvertedAttention", "Layout", "convert", "find_attention", "key_padding_mask", "replay"]
