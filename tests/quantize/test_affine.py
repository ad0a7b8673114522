"""Uniform affine quantisation: grid conventions, round-trip error, STE gradients."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.core.errors import ConfigError
from slimkit.quantize.affine import dequantize, fake_quant, qparams, qrange, quant_error, quantize


@pytest.mark.parametrize("bits", range(2, 9))
def test_qrange_is_narrow_signed_or_unsigned(bits: int) -> None:
    lo, hi = qrange(bits, symmetric=True)
    assert lo == -hi and hi == 2 ** (bits - 1) - 1
    assert qrange(bits, symmetric=False) == (0, 2**bits - 1)


@pytest.mark.parametrize("bad", [0, 1, 17, 4.0, True])
def test_bits_out_of_range_is_config_error(bad) -> None:
    with pytest.raises(ConfigError, match="bits"):
        qrange(bad, True)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), symmetric=st.booleans(), seed=st.integers(0, 10_000),
       shift=st.floats(-3, 3), spread=st.floats(1e-3, 100))
def test_round_trip_error_at_most_half_a_step(bits, symmetric, seed, shift, spread) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(500, generator=gen) + shift) * spread
    scale, zp = qparams(x.min(), x.max(), bits, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    codes = quantize(x, scale, zp, qmin, qmax)
    assert codes.dtype == torch.int32
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    err = (dequantize(codes, scale, zp) - x).abs().max()
    assert err <= scale / 2 * (1 + 1e-4) + 1e-6 * x.abs().max()


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), lo=st.floats(-50, 50), width=st.floats(1e-3, 100))
def test_asymmetric_grid_represents_zero_exactly(bits, lo, width) -> None:
    scale, zp = qparams(lo, lo + width, bits, symmetric=False)
    qmin, qmax = qrange(bits, False)
    assert qmin <= int(zp) <= qmax
    zero = torch.zeros(3)
    assert torch.equal(dequantize(quantize(zero, scale, zp, qmin, qmax), scale, zp), zero)


def test_asymmetric_range_is_widened_to_contain_zero() -> None:
    scale, zp = qparams(2.0, 6.0, 8, symmetric=False)  # all positive: grid must start at 0
    assert int(zp) == 0
    assert torch.isclose(scale, torch.tensor(6.0 / 255))
    scale, zp = qparams(-6.0, -2.0, 8, symmetric=False)  # all negative: grid must end at 0
    assert int(zp) == 255


def test_symmetric_grid_is_odd_symmetric() -> None:
    x = torch.randn(1000) * 3
    scale, zp = qparams(x.min(), x.max(), 4, symmetric=True)
    assert int(zp) == 0
    q_pos, q_neg = quantize(x, scale, zp, -7, 7), quantize(-x, scale, zp, -7, 7)
    assert torch.equal(q_pos, -q_neg)
    assert int(q_pos.abs().max()) == 7  # the largest magnitude lands on the outermost code


def test_matches_torch_reference_fake_quant() -> None:
    x = torch.randn(4096) * 2 + 0.5
    scale, zp = qparams(x.min(), x.max(), 8, symmetric=False)
    ours = fake_quant(x, scale, zp, 0, 255)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), 0, 255)
    diff = (ours - ref).abs()
    # torch multiplies by 1/scale, we divide: only exact rounding ties may differ, by one step.
    assert (diff > 1e-6).float().mean() < 1e-3
    assert float(diff.max()) <= float(scale) * 1.001


def test_values_outside_range_are_clamped_and_constant_tensor_is_safe() -> None:
    scale, zp = qparams(-1.0, 1.0, 8, symmetric=True)
    x = torch.tensor([-10.0, 0.3, 10.0])
    y = dequantize(quantize(x, scale, zp, -127, 127), scale, zp)
    assert torch.allclose(y[[0, 2]], torch.tensor([-1.0, 1.0]))
    scale, zp = qparams(2.0, 2.0, 8, symmetric=False)  # min == max
    assert torch.isfinite(scale) and scale > 0
    c = torch.full((5,), 2.0)
    assert torch.allclose(dequantize(quantize(c, scale, zp, 0, 255), scale, zp), c, atol=float(scale))


def test_qparams_is_elementwise_for_per_channel_ranges() -> None:
    lo, hi = torch.tensor([-1.0, -4.0, 0.0]), torch.tensor([1.0, 2.0, 8.0])
    scale, _zp = qparams(lo, hi, 4, symmetric=True)
    assert scale.shape == (3,) and torch.allclose(scale, torch.tensor([1.0, 4.0, 8.0]) / 7)
    with pytest.raises(ConfigError, match="x_min"):
        qparams(torch.tensor([1.0]), torch.tensor([0.0]), 8)


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quant_forward_equals_quantize_dequantize(symmetric: bool) -> None:
    x = torch.randn(300)
    scale, zp = qparams(-1.0, 1.5, 5, symmetric)
    qmin, qmax = qrange(5, symmetric)
    for ste in ("identity", "clipped"):
        assert torch.equal(fake_quant(x, scale, zp, qmin, qmax, ste=ste),
                           dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp))


def test_ste_gradients_identity_and_clipped() -> None:
    scale, zp = qparams(-1.0, 1.0, 8, symmetric=True)
    x = torch.linspace(-3, 3, 601, requires_grad=True)
    fake_quant(x, scale, zp, -127, 127, ste="identity").sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x.grad = None
    fake_quant(x, scale, zp, -127, 127, ste="clipped").sum().backward()
    inside = (x.detach() >= -127 * scale) & (x.detach() <= 127 * scale)
    assert torch.equal(x.grad, inside.float())
    assert 0 < int(inside.sum()) < x.numel()  # the test really covers both sides
    with pytest.raises(ConfigError, match="ste"):
        fake_quant(x, scale, zp, -127, 127, ste="round")


def test_more_bits_means_less_error() -> None:
    x = torch.randn(5000)
    errs = []
    for bits in range(2, 9):
        s, z = qparams(x.min(), x.max(), bits, symmetric=False)
        errs.append(float(quant_error(x, s, z, *qrange(bits, False))))
    assert all(a > b for a, b in itertools.pairwise(errs))
