"""Pruning schedules: when masks change during training and to what target.

The formulas are small pure functions; the schedule classes wrap them with the step
bookkeeping :class:`slimkit.prune.hooks.SparsityHook` needs. A schedule says, for a
training step ``t``, whether masks are updated (``updates_at``) and the target, either
as a sparsity fraction (``target(t)``) or, for Narang et al.'s ramp, as a magnitude
threshold relative to each layer's reference magnitude (``kind == "threshold"``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

# -- formulas ----------------------------------------------------------------------------------


def cubic_sparsity(t: int, final: float, *, initial: float = 0.0, start: int = 0, steps: int = 1) -> float:
    """Zhu & Gupta (2017) AGP: ``s_t = s_f + (s_0 - s_f) (1 - (t - t_0) / (n dt))^3``.

    ``steps`` is the span ``n * dt``. Before ``start`` the sparsity is ``initial``; after
    ``start + steps`` it stays at ``final``. The cubic prunes fast while there are many
    redundant weights and slowly near the end, when each weight matters more.
    """
    if t <= start:
        return initial
    frac = min(1.0, (t - start) / max(1, steps))
    return final + (initial - final) * (1.0 - frac) ** 3


def narang_threshold(t: int, q: float, *, start: int, ramp: int, end: int, freq: int = 1) -> float:
    """Narang et al. (2017) two-slope threshold ``epsilon`` at step ``t``.

    ``theta = 2 q freq / (2 (ramp - start) + 3 (end - ramp))`` and ``phi = 1.5 theta``:
    the threshold rises with slope ``theta / freq`` from ``start`` to ``ramp`` and with slope
    ``phi / freq`` from ``ramp`` to ``end``, where it reaches ``q`` (the paper takes ``q`` as
    the 90th percentile of the layer's |w|, so the layer ends near 90 % sparse). Weights
    with ``|w| < epsilon`` are pruned.
    """
    if not start <= ramp <= end or end == start:
        raise ValueError(f"need start <= ramp <= end and start < end, got {start}, {ramp}, {end}")
    theta = 2.0 * q * freq / (2.0 * (ramp - start) + 3.0 * (end - ramp))
    phi = 1.5 * theta
    t = min(max(t, start), end)
    if t < ramp:
        return theta * (t - start) / freq
    return (theta * (ramp - start) + phi * (t - ramp)) / freq


def rigl_drop_fraction(t: int, *, alpha: float, end: int) -> float:
    """RigL's cosine-decayed fraction of active weights to drop/regrow: ``alpha/2 (1 + cos(pi t / end))``."""
    if t >= end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * t / end))


# -- schedule objects --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base: update masks every ``every`` steps in ``[start, end]``."""

    kind: ClassVar[str] = "sparsity"  # "sparsity" (a fraction) or "threshold" (relative magnitude)

    def target(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def updates_at(self, t: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once to ``sparsity`` at step ``at`` and keep the mask (then fine-tune)."""

    sparsity: float
    at: int = 0

    def target(self, t: int) -> float:
        return self.sparsity if t >= self.at else 0.0

    def updates_at(self, t: int) -> bool:
        return t == self.at


@dataclasses.dataclass(frozen=True)
class Cubic(Schedule):
    """Gradual pruning (AGP): cubic ramp from ``initial`` to ``final`` over ``steps``, mask updated every ``every``."""

    final: float
    steps: int
    start: int = 0
    initial: float = 0.0
    every: int = 1

    def target(self, t: int) -> float:
        return cubic_sparsity(t, self.final, initial=self.initial, start=self.start, steps=self.steps)

    def updates_at(self, t: int) -> bool:
        if not self.start <= t <= self.start + self.steps:
            return False
        return (t - self.start) % self.every == 0 or t == self.start + self.steps


@dataclasses.dataclass(frozen=True)
class NarangRamp(Schedule):
    """Narang et al. threshold ramp; target is ``epsilon / q`` (each layer scales by its own ``q``).

    ``q`` is measured per layer at ``start`` as the ``percentile`` quantile of |w|.
    """

    kind: ClassVar[str] = "threshold"
    start: int
    ramp: int
    end: int
    freq: int = 1
    percentile: float = 0.9

    def target(self, t: int) -> float:
        return narang_threshold(t, 1.0, start=self.start, ramp=self.ramp, end=self.end, freq=self.freq)

    def updates_at(self, t: int) -> bool:
        return self.start <= t <= self.end and (t - self.start) % self.freq == 0


@dataclasses.dataclass(frozen=True)
class DSD(Schedule):
    """Dense-sparse-dense (Han et al. 2017): dense until ``sparse_at``, masked at ``sparsity``
    until ``dense_at``, then masks are dropped and the pruned weights retrain from zero."""

    sparsity: float
    sparse_at: int
    dense_at: int

    def target(self, t: int) -> float:
        return self.sparsity if self.sparse_at <= t < self.dense_at else 0.0

    def updates_at(self, t: int) -> bool:
        return t in (self.sparse_at, self.dense_at)


@dataclasses.dataclass(frozen=True)
class GrowPrune(Schedule):
    """Grow-and-prune at constant ``sparsity`` (RigL, Evci et al. 2020).

    At ``at`` the mask is set by magnitude; every ``every`` steps until ``end`` a
    cosine-decayed fraction (``alpha`` at first) of the active weights with the smallest
    |w| is dropped and as many inactive weights with the largest |dL/dw| regrow (from zero).
    """

    sparsity: float
    every: int
    end: int
    alpha: float = 0.3
    at: int = 0

    def target(self, t: int) -> float:
        return self.sparsity if t >= self.at else 0.0

    def updates_at(self, t: int) -> bool:
        return t == self.at or (self.at < t < self.end and (t - self.at) % self.every == 0)

    def drop_fraction(self, t: int) -> float:
        return rigl_drop_fraction(t - self.at, alpha=self.alpha, end=self.end - self.at)


__all__ = [
    "DSD",
    "Cubic",
    "GrowPrune",
    "NarangRamp",
    "OneShot",
    "Schedule",
    "cubic_sparsity",
    "narang_threshold",
    "rigl_drop_fraction",
]
