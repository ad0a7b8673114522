"""Honest measurement: size, compute, memory traffic, latency and task metrics.

- :func:`profile` / :class:`Profile`: params, bytes on disk (what ``slimkit.save``
  writes), MACs counted per ATen op, memory-access cost, peak activations, per-layer table.
- :func:`count_macs`, :func:`register_mac_formula`: the MAC counter and its op table.
- :func:`latency`, :func:`compare`: wall-clock timing and interleaved A/B speedup.
- :func:`accuracy`, :func:`spearman`, :func:`top1_agreement`, :func:`cosine_fidelity`.
"""
from .counter import register_mac_formula
from .latency import CompareResult, LatencyResult, compare, latency
from .metrics import accuracy, cosine_fidelity, spearman, top1_agreement
from .profile import LayerProfile, Profile, count_macs, profile

__all__ = [
    "CompareResult",
    "LatencyResult",
    "LayerProfile",
    "Profile",
    "accuracy",
    "compare",
    "cosine_fidelity",
    "count_macs",
    "latency",
    "profile",
    "register_mac_formula",
    "spearman",
    "top1_agreement",
]
