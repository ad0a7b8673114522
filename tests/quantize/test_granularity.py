"""Per-tensor / per-channel / per-group parameters."""
from __future__ import annotations

import functools

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.quantize.granularity import per_channel, per_group, per_tensor
from slimkit.quantize.observers import MinMaxObserver, PercentileObserver


def _rows_with_varied_scale(rows: int = 16, cols: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(rows, cols, generator=gen) * torch.logspace(-2, 1, rows)[:, None]


def test_per_channel_scales_equal_per_tensor_of_each_slice() -> None:
    x = torch.randn(3, 8, 5, 5)
    qp = per_channel(x, axis=1, bits=4, symmetric=False)
    assert qp.scale.shape == (1, 8, 1, 1) and qp.n_scales == 8
    for c in range(8):
        ref = per_tensor(x[:, c], bits=4, symmetric=False)
        assert torch.isclose(qp.scale[0, c, 0, 0], ref.scale)
        assert qp.zero_point[0, c, 0, 0] == ref.zero_point


def test_per_group_scales_equal_per_tensor_of_each_group() -> None:
    x = _rows_with_varied_scale(6, 24)
    qp = per_group(x, group_size=8, axis=1, bits=3)
    assert qp.scale.shape == (6, 3) and qp.n_scales == 18
    for r in range(6):
        for g in range(3):
            ref = per_tensor(x[r, g * 8:(g + 1) * 8], bits=3)
            assert torch.isclose(qp.scale[r, g], ref.scale)
    col = per_group(x, group_size=3, axis=0, bits=3)  # groups down the columns
    assert col.scale.shape == (2, 24)
    assert torch.isclose(col.scale[1, 5], per_tensor(x[3:6, 5], bits=3).scale)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_group_round_trip_within_half_step(symmetric: bool) -> None:
    x = _rows_with_varied_scale()
    qp = per_group(x, group_size=16, bits=4, symmetric=symmetric)
    codes = qp.quantize(x)
    assert codes.shape == x.shape
    step = qp.expanded()[0].expand_as(x)
    assert bool(((qp.dequantize(codes) - x).abs() <= step / 2 * (1 + 1e-4)).all())


def test_per_group_that_does_not_divide_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="group_size 32 does not divide dim 1 of size 50"):
        per_group(torch.randn(4, 50), group_size=32)
    with pytest.raises(ConfigError, match="group_size"):
        per_group(torch.randn(4, 50), group_size=0)
    with pytest.raises(ConfigError, match="axis"):
        per_channel(torch.randn(4, 50), axis=2)


def test_finer_granularity_lowers_error() -> None:
    x = _rows_with_varied_scale()

    def mse(qp) -> float:
        return float(((qp.dequantize(qp.quantize(x)) - x) ** 2).mean())

    errs = [mse(per_tensor(x, bits=4)), mse(per_channel(x, bits=4)), mse(per_group(x, 16, bits=4))]
    assert errs[0] > errs[1] > errs[2]


def test_observer_factory_is_used() -> None:
    x = torch.randn(4, 4000)
    x[:, 0] = 100.0  # one outlier per row
    mm = per_channel(x, bits=8, observer=MinMaxObserver)
    pct = per_channel(x, bits=8, observer=functools.partial(PercentileObserver, pct=99.0))
    assert bool((pct.scale < mm.scale / 10).all())


def test_fake_quant_through_qparams_has_clipped_ste() -> None:
    x = torch.randn(4, 32)
    qp = per_group(x, 8, bits=4)
    wide = (x * 2).requires_grad_(True)  # half the values now fall outside their group range
    qp.fake_quant(wide).sum().backward()
    s = qp.expanded()[0]
    inside = (wide.detach().abs() <= 7 * s).float()
    assert torch.equal(wide.grad, inside)
    assert 0 < inside.mean() < 1
