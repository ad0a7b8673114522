"""Efficient attention: converted HF self-attention modules (issue 18).

- ``attention.window`` (:mod:`.window`, :class:`WindowAttention`): sliding-window attention
  with global tokens, computed blockwise in O(n*w) (math in :mod:`.window_math`).
- :mod:`.positions`: extend a model's absolute position embeddings for long inputs.
"""
