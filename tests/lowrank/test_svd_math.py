"""The math of lowrank.svd (slimkit.lowrank.svd): truncation, rank rules, budget, whitening."""
from __future__ import annotations

import pytest
import torch

from slimkit.core import MethodError
from slimkit.lowrank.svd import (
    allocate_budget,
    break_even_rank,
    factored_params,
    factorize,
    rank_for_energy,
    rank_for_ratio,
    relative_error,
    spectrum,
    whitener,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated_inputs(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    """Inputs ``[n, dim]`` whose energy sits in a few directions (as activations' does)."""
    g = _gen(seed)
    scales = torch.logspace(1, -2, dim)  # 10 ... 0.01
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0]
    return (torch.randn(n, dim, generator=g) * scales) @ basis.T


def test_error_falls_with_rank_and_is_the_tail_of_the_spectrum() -> None:
    w = torch.randn(48, 32, generator=_gen())
    s = spectrum(w)
    errors = []
    for r in (1, 4, 8, 16, 32):
        a, b = factorize(w, r)
        assert a.shape == (48, r) and b.shape == (r, 32)
        err = relative_error(w, a, b)
        # Eckart-Young: the best rank-r error is the norm of the dropped singular values
        assert err == pytest.approx(float(s[r:].norm() / s.norm()), abs=1e-5)
        errors.append(err)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5


def test_factors_keep_dtype_and_reject_bad_ranks() -> None:
    w = torch.randn(8, 6, generator=_gen(), dtype=torch.float64)
    a, b = factorize(w, 3)
    assert a.dtype == b.dtype == torch.float64
    for bad in (0, 7):
        with pytest.raises(MethodError, match="rank"):
            factorize(w, bad)


def test_break_even_and_ratio_rules() -> None:
    assert break_even_rank(384, 384) == 191  # 191 * 768 < 384^2 <= 192 * 768
    assert factored_params(384, 384, 192) >= 384 * 384 > factored_params(384, 384, 191)
    for out_f, in_f, ratio in ((1536, 384, 0.6), (384, 384, 0.25), (100, 30, 0.5)):
        r = rank_for_ratio(out_f, in_f, ratio)
        assert factored_params(out_f, in_f, r) <= ratio * out_f * in_f < factored_params(out_f, in_f, r + 1)
    assert rank_for_ratio(4, 4, 0.01) == 1  # never zero


def test_energy_rule_keeps_the_smallest_sufficient_rank() -> None:
    s = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5])
    e = s**2 / (s**2).sum()
    for energy in (0.5, 0.8, 0.9, 0.99, 1.0):
        r = rank_for_energy(s, energy)
        assert float(e[:r].sum()) >= energy - 1e-9
        assert r == 1 or float(e[: r - 1].sum()) < energy


def _cost(rank: int | None, out_f: int, in_f: int) -> int:
    return out_f * in_f if rank is None else factored_params(out_f, in_f, rank)


def test_budget_is_met_and_goes_where_energy_is() -> None:
    g = _gen(2)
    low = torch.randn(64, 3, generator=g) @ torch.randn(3, 64, generator=g) + 1e-3 * torch.randn(64, 64, generator=g)
    flat = torch.randn(64, 64, generator=g)
    wide = torch.randn(128, 32, generator=g)
    spectra = {n: (spectrum(w), *w.shape) for n, w in (("low", low), ("flat", flat), ("wide", wide))}
    dense = sum(o * i for _, o, i in spectra.values())
    for fraction in (0.2, 0.4):
        ranks = allocate_budget(spectra, fraction)
        spent = sum(_cost(ranks[n], o, i) for n, (_, o, i) in spectra.items())
        assert spent <= fraction * dense
        assert spent > fraction * dense - 2 * 160  # within two directions of the budget: nothing left on the table
        assert ranks["low"] is not None and ranks["flat"] is not None
        assert 3 <= ranks["low"] < ranks["flat"]  # the rank-3 layer needs 3 directions, not more
        assert all(r <= break_even_rank(o, i) for n, (_, o, i) in spectra.items() for r in [ranks[n]])
    # the same spectra scaled: relative energy makes the allocation scale-free
    scaled = {n: (s * 100 if n == "flat" else s, o, i) for n, (s, o, i) in spectra.items()}
    assert allocate_budget(scaled, 0.3) == allocate_budget(spectra, 0.3)


def test_budget_keeps_a_layer_dense_rather_than_near_its_break_even_rank() -> None:
    g = _gen(6)
    low = torch.randn(64, 2, generator=g) @ torch.randn(2, 64, generator=g)
    flat = torch.randn(64, 64, generator=g)
    spectra = {n: (spectrum(w), *w.shape) for n, w in (("low", low), ("flat", flat))}
    ranks = allocate_budget(spectra, 0.6)
    # the flat layer would need its break-even rank (31: 97 % of its weights) to keep most of its
    # energy; dense costs 3 % more and keeps all of it, and the rank-2 layer frees the budget
    assert ranks["flat"] is None and ranks["low"] is not None and ranks["low"] >= 2  # leftovers go to "low"
    assert _cost(2, 64, 64) + 64 * 64 <= 0.6 * 2 * 64 * 64


def test_whitening_lowers_the_output_error_on_correlated_inputs() -> None:
    w = torch.randn(32, 48, generator=_gen(3))
    x = _correlated_inputs(2000, 48)
    chol = whitener(x.T.double() @ x.double(), damping=1e-6)
    for r in (4, 8, 16):
        plain, aware = factorize(w, r), factorize(w, r, chol)
        e_plain, e_aware = relative_error(w, *plain, x), relative_error(w, *aware, x)
        assert e_aware < 0.7 * e_plain, (r, e_aware, e_plain)
        # ... at the price of the weight error, which plain SVD minimises
        assert relative_error(w, *aware) > relative_error(w, *plain)


def test_whitener_damps_a_singular_gram() -> None:
    x = torch.randn(10, 24, generator=_gen(4))  # 10 samples of 24 features: rank 10
    gram = x.T.double() @ x.double()
    chol = whitener(gram, damping=0.01)
    assert torch.isfinite(chol).all() and torch.allclose(torch.tril(chol), chol)
    a, b = factorize(torch.randn(8, 24, generator=_gen(5)), 4, chol)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    # zero damping on a singular Gram is raised until Cholesky succeeds (a slimkit error only if it never does)
    assert torch.isfinite(whitener(gram, damping=0.0)).all()
    with pytest.raises(MethodError, match="positive definite"):
        whitener(torch.full((3, 3), float("nan"), dtype=torch.float64), damping=0.01)
