"""Parameter sharing: several weights stored as one.

- Within a Linear: ``share.hashed`` (HashedNets), ``share.circulant`` and ``share.toeplitz``
  (:mod:`.structured`; layers in :mod:`.structured_layers`, index math in :mod:`.tying`).
- ``share.layers`` (:mod:`.layers`, :class:`LayersShare`): ALBERT-style cross-layer
  sharing; groups of consecutive transformer blocks hold one set of weights.

Vocabulary trimming removes rows rather than sharing them and is ``prune.vocab``
(:mod:`slimkit.prune.vocab`); k-means weight sharing within a layer is ``quantize.kmeans``
(:mod:`slimkit.quantize.kmeans_method`).
"""
from .layers import LayersShare

__all__ = ["LayersShare"]
