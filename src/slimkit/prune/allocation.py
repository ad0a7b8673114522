"""Allocation: how many units each group keeps, and which ones.

Pure functions over score vectors (higher = more important, see
:mod:`slimkit.prune.importance`); the structured-pruning surgery applies the result.

- ``"uniform"``: every group drops ``ratio`` of its units (the same shape everywhere,
  easiest to reason about).
- ``"global"``: one threshold across all groups, so redundant layers lose more. Raw
  scores of different layers are not comparable (a wide layer's L1 norms are larger), so
  each group's scores are first divided by the group's mean score: a unit is then ranked
  by how important it is *relative to its own layer*, and the ``ratio`` of all units
  with the lowest relative score is dropped.

Kept counts are then adjusted per group: rounded to the nearest multiple of
``round_to`` (ties keep more; hardware likes widths that are multiples of 8), never
above the group size and never below ``min_keep``. A group smaller than ``round_to``
has no positive multiple to round to and is left whole. Ties between equal scores are
broken towards the lower index, so the result is deterministic.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.errors import ConfigError
from ..core.targets import check_patterns, first_match


def _check_ratio(ratio: float, key: str) -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
        raise ConfigError(f"expected a pruning ratio in [0, 1), got {ratio!r}", key=key)


def keep_count(n: int, ratio: float, *, round_to: int = 1, min_keep: int = 1) -> int:
    """Units a group of ``n`` keeps when it drops ``ratio`` of them, after rounding and clamping.

    The dropped count is ``floor(n * ratio)`` (so ratio 0 drops nothing and a group never
    loses more than asked before rounding).
    """
    _check_ratio(ratio, "ratio")
    return _adjust(n - math.floor(n * ratio + 1e-9), n, round_to, min_keep)


def _adjust(k: int, n: int, round_to: int, min_keep: int) -> int:
    """Round ``k`` to a multiple of ``round_to`` within ``[min_keep, n]`` (see module doc)."""
    if round_to < 1 or min_keep < 0:
        raise ConfigError(f"expected round_to >= 1 and min_keep >= 0, got {round_to}, {min_keep}", key="round_to")
    if n == 0:
        return 0
    if k < n and round_to > 1:
        if round_to > n:
            k = n
        else:
            down = (k // round_to) * round_to
            up = down + round_to
            k = up if (k - down >= up - k and up <= n) else down
            if k == 0:
                k = round_to
    return min(n, max(k, min_keep))


def _ratio_for(name: str, ratio: float, per_group_ratio: dict[str, float] | None) -> tuple[float, bool]:
    """The group's own ratio (exact key first, then the first matching pattern: glob or ``re:``)."""
    if per_group_ratio:
        if name in per_group_ratio:
            return per_group_ratio[name], True
        pattern = first_match(per_group_ratio, name)
        if pattern is not None:
            return per_group_ratio[pattern], True
    return ratio, False


def _top(scores: Tensor, k: int) -> Tensor:
    """Sorted indices of the ``k`` best scores; ties go to the lower index."""
    order = torch.argsort(-scores.float(), stable=True)  # best first, stable among equals
    return torch.sort(order[:k]).values.long()


def allocate(
    scores: dict[str, Tensor],
    ratio: float,
    *,
    mode: str = "uniform",
    per_group_ratio: dict[str, float] | None = None,
    round_to: int = 1,
    min_keep: int = 1,
) -> dict[str, Tensor]:
    """Sorted kept indices per group (``LongTensor``) for 1-d ``scores`` per group name.

    ``per_group_ratio`` maps group names or name patterns (fnmatch globs, or ``re:`` +
    a regular expression, as :class:`~slimkit.core.Targets` reads them) to a ratio that overrides
    ``ratio`` for those groups; in ``"global"`` mode such groups are allocated on their
    own and the rest share the global threshold.
    """
    _check_ratio(ratio, "ratio")
    for key, value in (per_group_ratio or {}).items():
        _check_ratio(value, f"per_group_ratio.{key}")
    check_patterns(per_group_ratio or {}, "per_group_ratio")
    if mode not in ("uniform", "global"):
        raise ConfigError(f"expected mode 'uniform' or 'global', got {mode!r}", key="mode")
    for name, s in scores.items():
        if s.dim() != 1:
            raise ValueError(f"scores for {name!r} must be 1-d, got shape {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"scores for {name!r} contain NaN or inf")

    counts: dict[str, int] = {}
    pooled: list[str] = []
    for name, s in scores.items():
        r, own = _ratio_for(name, ratio, per_group_ratio)
        if mode == "uniform" or own:
            counts[name] = keep_count(s.numel(), r, round_to=round_to, min_keep=min_keep)
        else:
            pooled.append(name)
    if pooled:
        counts.update(_global_counts({n: scores[n] for n in pooled}, ratio, round_to, min_keep))
    return {name: _top(s, counts[name]) for name, s in scores.items()}


def _global_counts(scores: dict[str, Tensor], ratio: float, round_to: int, min_keep: int) -> dict[str, int]:
    """Kept count per group under one threshold over mean-normalised scores."""
    names = list(scores)
    normed = []
    for name in names:
        s = scores[name].float()
        mean = s.abs().mean() if s.numel() else torch.tensor(0.0)
        normed.append(s / mean if mean > 0 else torch.ones_like(s))  # all-zero group: all equal
    flat = torch.cat(normed) if normed else torch.zeros(0)  # [N]
    owner = torch.cat([torch.full((s.numel(),), i) for i, s in enumerate(normed)])  # [N]
    n_drop = math.floor(flat.numel() * ratio + 1e-9)
    dropped = torch.argsort(flat, stable=True)[:n_drop]  # lowest first, ties: earlier group/index
    drops = torch.bincount(owner[dropped], minlength=len(names))
    return {
        name: _adjust(scores[name].numel() - int(drops[i]), scores[name].numel(), round_to, min_keep)
        for i, name in enumerate(names)
    }


__all__ = ["allocate", "keep_count"]
