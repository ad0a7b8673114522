"""Range observers: min-max, moving average, percentile, MSE, KL."""
from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import ConfigError, MethodError
from slimkit.quantize.affine import qrange, quant_error
from slimkit.quantize.observers import (
    KLObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    kl_threshold,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_minmax_tracks_all_batches_per_tensor_and_per_channel() -> None:
    batches = [torch.randn(8, 3, generator=_gen(i)) * (i + 1) for i in range(4)]
    obs, per_ch = MinMaxObserver(), MinMaxObserver(axis=1)
    for b in batches:
        obs.observe(b)
        per_ch.observe(b)
    allx = torch.cat(batches)
    lo, hi = obs.range()
    assert lo.shape == () and lo == allx.min() and hi == allx.max()
    lo_c, hi_c = per_ch.range()
    assert torch.equal(lo_c, allx.amin(0)) and torch.equal(hi_c, allx.amax(0))
    with pytest.raises(ConfigError, match="channels"):
        per_ch.observe(torch.randn(2, 5))


def test_range_before_observe_is_method_error() -> None:
    with pytest.raises(MethodError, match="observe"):
        MSEObserver().range()


def test_moving_average_follows_the_ema_formula() -> None:
    obs = MovingAverageMinMaxObserver(momentum=0.25)
    a, b = torch.randn(100, generator=_gen(1)), torch.randn(100, generator=_gen(2)) * 4
    obs.observe(a)
    assert obs.range()[1] == a.max()  # the first batch sets the range
    obs.observe(b)
    lo, hi = obs.range()
    assert torch.isclose(hi, a.max() + 0.25 * (b.max() - a.max()))
    assert torch.isclose(lo, a.min() + 0.25 * (b.min() - a.min()))
    with pytest.raises(ConfigError, match="momentum"):
        MovingAverageMinMaxObserver(momentum=0.0)


def test_percentile_clips_outliers() -> None:
    x = torch.randn(20_000, generator=_gen())
    x[:5] = torch.tensor([50.0, -60.0, 70.0, 80.0, -90.0])
    obs = PercentileObserver(pct=99.9)
    obs.observe(x)
    lo, hi = obs.range()
    assert 2.0 < hi < 5.0 and -5.0 < lo < -2.0  # N(0,1) 99.9 % point is ~3.1
    mm = MinMaxObserver()
    mm.observe(x)
    assert mm.range()[1] == 80.0


def test_sample_reservoir_is_bounded_and_unbiased_over_batches() -> None:
    obs = PercentileObserver(max_samples=2000)
    obs.observe(torch.zeros(10_000))
    obs.observe(torch.ones(10_000))
    s = obs.samples
    assert s.shape == (1, 2000)
    assert 0.4 < float(s.mean()) < 0.6  # both batches equally represented
    assert obs.range() == (torch.tensor(0.0), torch.tensor(1.0))  # exact min / max kept too


@pytest.mark.parametrize("axis", [None, 0])
def test_mse_observer_beats_minmax_on_heavy_tails(axis) -> None:
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((4, 5000))  # heavy tails, finite variance
    qmin, qmax = qrange(4, True)
    mm, mse = MinMaxObserver(axis=axis, bits=4), MSEObserver(axis=axis, bits=4)
    mm.observe(x)
    mse.observe(x)
    s_mm, _ = mm.qparams()
    s_mse, _ = mse.qparams()
    if axis is not None:
        s_mm, s_mse = s_mm[:, None], s_mse[:, None]
    err_mm = float(quant_error(x, s_mm, 0, qmin, qmax))
    err_mse = float(quant_error(x, s_mse, 0, qmin, qmax))
    assert err_mse < 0.5 * err_mm
    assert bool((mse.range()[1] < mm.range()[1]).all())


def test_mse_observer_never_clips_uniform_data_much() -> None:
    x = torch.rand(20_000, generator=_gen()) * 2 - 1  # no outliers: clipping only hurts at 8 bits
    obs = MSEObserver(bits=8)
    obs.observe(x)
    assert obs.range()[1] > 0.95 * x.max()


def test_kl_range_is_inside_minmax_on_laplacian() -> None:
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    kl, mm = KLObserver(bits=8), MinMaxObserver()
    kl.observe(x)
    mm.observe(x)
    lo, hi = kl.range()
    lo_mm, hi_mm = mm.range()
    assert lo_mm < lo < 0 < hi < hi_mm
    assert hi < 0.9 * max(-lo_mm, hi_mm)
    assert torch.isclose(-lo, hi) or lo == lo_mm  # symmetric unless the data ends first


def test_kl_threshold_drops_an_empty_tail_and_keeps_a_flat_one() -> None:
    hist = torch.zeros(2048)
    hist[:200] = torch.rand(200, generator=_gen()) + 0.5  # mass only in the first 200 bins
    assert kl_threshold(hist.numpy(), 128) <= 256
    flat = torch.ones(2048).numpy()  # uniform: nothing worth clipping
    assert kl_threshold(flat, 128) >= 1900


def test_observer_qparams_use_its_bits_and_symmetry() -> None:
    obs = MinMaxObserver(bits=4, symmetric=False)
    obs.observe(torch.tensor([-1.0, 2.0]))
    scale, zp = obs.qparams()
    assert torch.isclose(scale, torch.tensor(3.0 / 15)) and int(zp) == 5
