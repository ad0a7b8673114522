"""Attention conversions for trained encoders: the computation changes, the HF interface stays.

- :mod:`.base`: find BERT-family / ViT-style self-attention modules, swap them for a
  :class:`~.base.ConvertedAttention` subclass, replay the swap on restore.
"""
from .base import ConvertedAttention, Layout, convert, find_attention, key_padding_mask, replay

__all__ = ["ConvertedAttention", "Layout", "convert", "find_attention", "key_padding_mask", "replay"]
