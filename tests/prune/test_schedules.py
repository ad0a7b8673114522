"""Schedule formulas (AGP cubic, Narang ramp, RigL decay, DSD) against hand-computed values."""
from __future__ import annotations

import itertools

import pytest

from slimkit.prune.schedules import (
    DSD,
    Cubic,
    GrowPrune,
    NarangRamp,
    OneShot,
    cubic_sparsity,
    narang_threshold,
    rigl_drop_fraction,
)


def test_cubic_values_at_start_middle_end() -> None:
    # s_t = s_f + (s_0 - s_f)(1 - (t - t0)/(n dt))^3 with s_0=0.1, s_f=0.9, t0=100, n dt=400
    kw = {"initial": 0.1, "start": 100, "steps": 400}
    assert cubic_sparsity(0, 0.9, **kw) == pytest.approx(0.1)
    assert cubic_sparsity(100, 0.9, **kw) == pytest.approx(0.1)
    assert cubic_sparsity(300, 0.9, **kw) == pytest.approx(0.9 - 0.8 * 0.125)  # half way: (1/2)^3
    assert cubic_sparsity(200, 0.9, **kw) == pytest.approx(0.9 - 0.8 * 0.75**3)
    assert cubic_sparsity(500, 0.9, **kw) == pytest.approx(0.9)
    assert cubic_sparsity(10_000, 0.9, **kw) == pytest.approx(0.9)
    values = [cubic_sparsity(t, 0.9, **kw) for t in range(0, 600, 7)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    # front-loaded: more than half of the pruning happens in the first third of the ramp
    assert cubic_sparsity(100 + 400 // 3, 0.9, **kw) - 0.1 > 0.5 * 0.8


def test_cubic_schedule_updates_every_k_and_at_the_end() -> None:
    s = Cubic(final=0.8, steps=25, start=5, every=10)
    assert [t for t in range(40) if s.updates_at(t)] == [5, 15, 25, 30]
    assert s.target(30) == pytest.approx(0.8) and s.target(5) == 0.0


def test_narang_threshold_two_slopes_and_endpoint() -> None:
    q, start, ramp, end, freq = 0.4, 10, 50, 110, 5
    theta = 2 * q * freq / (2 * (ramp - start) + 3 * (end - ramp))
    assert narang_threshold(start, q, start=start, ramp=ramp, end=end, freq=freq) == 0.0
    assert narang_threshold(30, q, start=start, ramp=ramp, end=end, freq=freq) == pytest.approx(theta * 20 / freq)
    at_ramp = narang_threshold(ramp, q, start=start, ramp=ramp, end=end, freq=freq)
    assert at_ramp == pytest.approx(theta * 40 / freq)
    # second slope is 1.5x the first, and the ramp ends exactly at q
    slope1 = (at_ramp - narang_threshold(ramp - 10, q, start=start, ramp=ramp, end=end, freq=freq)) / 10
    slope2 = (narang_threshold(ramp + 10, q, start=start, ramp=ramp, end=end, freq=freq) - at_ramp) / 10
    assert slope2 == pytest.approx(1.5 * slope1)
    assert narang_threshold(end, q, start=start, ramp=ramp, end=end, freq=freq) == pytest.approx(q)
    assert narang_threshold(end + 100, q, start=start, ramp=ramp, end=end, freq=freq) == pytest.approx(q)
    with pytest.raises(ValueError):
        narang_threshold(0, q, start=10, ramp=5, end=20)
    r = NarangRamp(start=0, ramp=20, end=40, freq=10)
    assert r.kind == "threshold" and r.target(40) == pytest.approx(1.0)
    assert [t for t in range(50) if r.updates_at(t)] == [0, 10, 20, 30, 40]


def test_rigl_decay_dsd_phases_and_one_shot() -> None:
    assert rigl_drop_fraction(0, alpha=0.3, end=100) == pytest.approx(0.3)
    assert rigl_drop_fraction(50, alpha=0.3, end=100) == pytest.approx(0.15)
    assert rigl_drop_fraction(100, alpha=0.3, end=100) == 0.0
    gp = GrowPrune(sparsity=0.8, every=10, end=50, at=5)
    assert [t for t in range(60) if gp.updates_at(t)] == [5, 15, 25, 35, 45]
    assert gp.drop_fraction(5) == pytest.approx(0.3)
    d = DSD(sparsity=0.5, sparse_at=10, dense_at=30)
    assert [d.target(t) for t in (0, 9, 10, 29, 30, 99)] == [0.0, 0.0, 0.5, 0.5, 0.0, 0.0]
    assert [t for t in range(40) if d.updates_at(t)] == [10, 30]
    o = OneShot(sparsity=0.7, at=3)
    assert o.target(2) == 0.0 and o.target(3) == 0.7 and [t for t in range(9) if o.updates_at(t)] == [3]
