"""Binary (BinaryConnect / BWN / XNOR) and ternary (TWN / TTQ) weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.quantize.lowbit import TTQ, binarize, binarize_activations, binarize_ste, sign_ste, ternarize_twn


def _w(shape=(16, 8, 3, 3), seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _err(w: torch.Tensor, approx: torch.Tensor) -> float:
    return float(((w - approx) ** 2).sum())


def test_bwn_scale_is_mean_abs_and_least_squares_optimal() -> None:
    w = _w()
    w[0, 0, 0, 0] = 0.0
    codes, alpha = binarize(w, "bwn")
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) == {-1, 1}
    assert codes[0, 0, 0, 0] == 1  # sign(0) = +1
    assert torch.isclose(alpha, w.abs().mean())
    base = _err(w, alpha * codes)
    assert base < _err(w, 0.97 * alpha * codes) and base < _err(w, 1.03 * alpha * codes)


def test_binaryconnect_and_xnor_scales() -> None:
    w = _w()
    codes, alpha = binarize(w, "binaryconnect")
    assert alpha == 1.0 and torch.equal(codes, torch.where(w < 0, -1, 1).to(torch.int8))
    codes, alpha = binarize(w, "xnor")
    assert alpha.shape == (16, 1, 1, 1)
    assert torch.allclose(alpha[:, 0, 0, 0], w.abs().mean(dim=(1, 2, 3)))
    assert _err(w, alpha * codes) < _err(w, binarize(w, "bwn")[1] * codes)  # per-filter is finer
    with pytest.raises(ConfigError, match="mode"):
        binarize(w, "stochastic")


def test_sign_ste_gradient_is_hard_tanh() -> None:
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    y = sign_ste(x)
    assert set(y.detach().unique().tolist()) == {-1.0, 1.0}
    y.sum().backward()
    assert torch.equal(x.grad, (x.detach().abs() <= 1).float())
    w = _w((4, 5)).requires_grad_(True)
    out = binarize_ste(w)
    assert torch.allclose(out.detach(), w.detach().abs().mean() * torch.where(w < 0, -1.0, 1.0))
    out.sum().backward()
    assert w.grad is not None and bool((w.grad[w.detach().abs() > 1] == 0).all())


def test_binarize_activations_scale() -> None:
    x = _w((2, 4, 6, 6))
    _sign, k = binarize_activations(x)
    assert k.shape == (2, 1, 6, 6) and torch.allclose(k, x.abs().mean(1, keepdim=True))
    _, k3 = binarize_activations(x, kernel_size=3)
    assert k3.shape == (2, 1, 6, 6)
    assert torch.isclose(k3[1, 0, 2, 3], k[1, 0, 1:4, 2:5].mean())  # interior: 3x3 box mean
    with pytest.raises(ConfigError):
        binarize_activations(torch.randn(5))


@pytest.mark.parametrize("axis", [None, 0])
def test_twn_threshold_and_scale(axis) -> None:
    w = _w()
    codes, alpha = ternarize_twn(w, axis=axis)
    assert set(codes.unique().tolist()) == {-1, 0, 1}
    dims = (1, 2, 3)
    mean_abs = w.abs().mean() if axis is None else w.abs().mean(dim=dims, keepdim=True)
    keep = w.abs() > 0.7 * mean_abs
    assert torch.equal(codes != 0, keep)
    assert torch.equal(codes[keep], torch.sign(w[keep]).to(torch.int8))
    if axis is None:
        assert torch.isclose(alpha, w.abs()[keep].mean())
    else:
        assert alpha.shape == (16, 1, 1, 1)
        assert torch.isclose(alpha[3, 0, 0, 0], w[3].abs()[keep[3]].mean())


def test_twn_beats_bwn_on_gaussian_and_handles_zeros() -> None:
    w = _w()
    codes, alpha = ternarize_twn(w)
    bcodes, balpha = binarize(w, "bwn")
    assert _err(w, alpha * codes) < _err(w, balpha * bcodes)
    codes0, alpha0 = ternarize_twn(torch.zeros(10))
    assert alpha0 == 0 and bool((codes0 == 0).all())


def test_ttq_scales_receive_the_paper_gradients() -> None:
    w = _w((8, 8)).requires_grad_(True)
    ttq = TTQ(threshold=0.3, init=w.detach())
    pos, neg = ttq.masks(w)
    assert torch.isclose(ttq.wp.detach(), w.detach()[pos].mean())
    assert torch.isclose(ttq.wn.detach(), -w.detach()[neg].mean())
    with torch.no_grad():
        ttq.wp.fill_(1.5)
        ttq.wn.fill_(0.5)
    out = ttq(w)
    assert set(out.detach().unique().tolist()) == {-0.5, 0.0, 1.5}
    g = _w((8, 8), seed=3)
    (out * g).sum().backward()
    assert torch.isclose(ttq.wp.grad, g[pos].sum())
    assert torch.isclose(ttq.wn.grad, -g[neg].sum())
    factor = torch.where(pos, 1.5, torch.where(neg, 0.5, 1.0))
    assert torch.allclose(w.grad, g * factor)
    assert torch.equal(ttq.codes(w), pos.to(torch.int8) - neg.to(torch.int8))


def test_ttq_learns_scales_that_fit_the_weights() -> None:
    w = _w((32, 32)) * 0.1
    ttq = TTQ(threshold=0.05)  # scales start at 1.0, far too large
    first = float(F.mse_loss(ttq(w), w).detach())
    for _ in range(30):  # plain SGD on the two scales
        ttq.zero_grad()
        F.mse_loss(ttq(w), w).backward()
        with torch.no_grad():
            for p in ttq.parameters():
                p -= 0.5 * p.grad
    assert float(F.mse_loss(ttq(w), w).detach()) < 0.1 * first
