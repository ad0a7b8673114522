"""k-means sharing, equal-frequency bins, power-of-two levels, residual binary."""
from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.quantize.affine import qparams, qrange, quant_error
from slimkit.quantize.nonuniform import (
    codebook_grad,
    equal_frequency_bins,
    kmeans_share,
    log2_dequantize,
    log2_quantize,
    residual_binary,
    residual_dequantize,
)


def _w(shape=(64, 48), seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_is_a_lloyd_fixed_point(init: str) -> None:
    w = _w()
    codebook, idx = kmeans_share(w, bits=3, init=init, iters=100)
    assert codebook.shape == (8,) and idx.shape == w.shape and idx.dtype == torch.int64
    assert bool((codebook[1:] >= codebook[:-1]).all())
    # every weight sits at its nearest centroid ...
    dist = (w.reshape(-1, 1) - codebook.reshape(1, -1)).abs()  # [n, K]
    chosen = dist.gather(1, idx.reshape(-1, 1))[:, 0]
    assert bool((chosen <= dist.min(1).values + 1e-5).all())
    # ... and every used centroid is the mean of its weights
    for j in idx.unique().tolist():
        assert torch.isclose(codebook[j], w[idx == j].mean(), atol=1e-5)


def test_kmeans_is_deterministic_and_beats_uniform_grid() -> None:
    w = _w()
    a, b = kmeans_share(w, 4), kmeans_share(w, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    err_km = float(((a[0][a[1]] - w) ** 2).mean())
    scale, zp = qparams(w.min(), w.max(), 4, symmetric=False)
    err_uniform = float(quant_error(w, scale, zp, *qrange(4, False)))
    assert err_km < 0.8 * err_uniform


def test_kmeans_with_few_distinct_values_is_exact_and_bits_are_checked() -> None:
    w = torch.tensor([-1.0, 0.5, 2.0]).repeat(50)
    codebook, idx = kmeans_share(w, bits=3)
    assert torch.equal(codebook[idx], w)
    with pytest.raises(ConfigError, match="bits"):
        kmeans_share(w, bits=9)
    with pytest.raises(ConfigError, match="init"):
        kmeans_share(w, bits=2, init="kmeans++")


def test_codebook_grad_sums_gradients_per_cluster() -> None:
    w, g = _w((10, 10)), _w((10, 10), seed=1)
    _codebook, idx = kmeans_share(w, 2)
    grad = codebook_grad(g, idx, 4)
    for j in range(4):
        assert torch.isclose(grad[j], g[idx == j].sum(), atol=1e-5)


@pytest.mark.parametrize("n", [1000, 1003, 5])
def test_equal_frequency_bins_are_balanced(n: int) -> None:
    w = torch.randn(n, generator=torch.Generator().manual_seed(n)) ** 3  # skewed
    codebook, idx = equal_frequency_bins(w, bits=3)
    counts = torch.bincount(idx, minlength=8)
    assert bool((codebook[1:] >= codebook[:-1]).all())
    if n >= 8:
        assert int(counts.max() - counts.min()) <= 1
        for j in range(8):
            assert torch.isclose(codebook[j], w[idx == j].mean(), atol=1e-5)
    else:
        assert torch.equal(codebook[idx], w)  # fewer weights than levels: exact


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_log2_levels_are_nearest_powers_of_two(bits: int) -> None:
    w = _w((40, 40)) * 0.3
    q = log2_quantize(w, bits)
    n_exp = 2 ** (bits - 1) - 1
    nonzero = q.values[q.values != 0].abs()
    assert bool((torch.log2(nonzero) == torch.round(torch.log2(nonzero))).all())
    assert nonzero.unique().numel() <= n_exp
    assert int(q.codes.abs().max()) <= n_exp
    levels = torch.exp2(torch.arange(q.e_min, q.e_min + n_exp, dtype=torch.float32))
    levels = torch.cat([-levels, torch.zeros(1), levels])  # every representable value
    best = (w.reshape(-1, 1) - levels).abs().min(1).values
    assert bool(((q.values.reshape(-1) - w.reshape(-1)).abs() <= best + 1e-6).all())
    assert torch.equal(log2_dequantize(q.codes, q.e_min), q.values)
    top = w.abs().max()
    assert 2 / 3 * top <= q.values.abs().max() <= 1.5 * top  # the largest weight keeps its level


def test_log2_zero_stays_zero_and_signs_are_kept() -> None:
    w = torch.tensor([0.0, 1e-9, -0.7, 0.7, 3.0])
    q = log2_quantize(w, 3)
    assert q.values[0] == 0 and q.values[1] == 0
    assert q.values[2] == -q.values[3] and q.values[3] > 0


def test_residual_binary_greedy_k1_is_bwn() -> None:
    w = _w()
    scales, codes = residual_binary(w, 1)
    assert codes.shape == (1, *w.shape) and codes.dtype == torch.int8
    assert torch.isclose(scales[0], w.abs().mean())
    assert torch.equal(codes[0], torch.where(w < 0, -1, 1).to(torch.int8))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_alternating_beats_greedy(k: int) -> None:
    w = _w()

    def err(mode: str) -> float:
        s, c = residual_binary(w, k, mode)
        assert set(c.unique().tolist()) <= {-1, 1}
        return float(((residual_dequantize(s, c) - w) ** 2).mean())

    e_greedy, e_alt = err("greedy"), err("alternating")
    assert e_alt < 0.95 * e_greedy
    s_less, c_less = residual_binary(w, k - 1, "alternating")
    assert e_alt < float(((residual_dequantize(s_less, c_less) - w) ** 2).mean())


def test_alternating_scales_are_least_squares_optimal() -> None:
    w = _w()
    s, c = residual_binary(w, 3, "alternating")
    base = float(((residual_dequantize(s, c) - w) ** 2).mean())
    for i in range(3):
        for f in (0.98, 1.02):
            t = s.clone()
            t[i] *= f
            assert float(((residual_dequantize(t, c) - w) ** 2).mean()) > base


def test_residual_binary_per_axis() -> None:
    w = _w((8, 3, 5)) * torch.logspace(-1, 1, 3)[None, :, None]
    s, c = residual_binary(w, 2, "alternating", axis=1)
    assert s.shape == (3, 2) and c.shape == (2, 8, 3, 5)
    rec = residual_dequantize(s, c, axis=1)
    for ch in range(3):  # each channel is its own independent problem
        s1, c1 = residual_binary(w[:, ch], 2, "alternating")
        assert torch.allclose(rec[:, ch], residual_dequantize(s1, c1), atol=1e-5)
    with pytest.raises(ConfigError, match="mode"):
        residual_binary(w, 2, "exhaustive")
