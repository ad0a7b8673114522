"""Tucker-2 / CP of conv kernels and their rank selection (slimkit.lowrank.conv_math)."""
from __future__ import annotations

import pytest
import torch

from slimkit.lowrank import conv_math as cm

pytestmark = pytest.mark.usefixtures("one_thread_module")


def planted_tucker(r_out: int, r_in: int, noise: float, seed: int = 0) -> torch.Tensor:
    """A [64, 48, 3, 3] kernel of exact multilinear rank (r_out, r_in) plus relative Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(r_out, r_in, 3, 3, generator=g)
    u_out = torch.linalg.qr(torch.randn(64, r_out, generator=g))[0]
    u_in = torch.linalg.qr(torch.randn(48, r_in, generator=g))[0]
    w = cm.tucker2_full(core, u_out, u_in)
    return w + noise * w.std() * torch.randn(w.shape, generator=g)


def test_vbmf_finds_the_planted_ranks() -> None:
    w = planted_tucker(8, 6, noise=0.02)
    assert (cm.vbmf_rank(cm.unfold(w, 0)), cm.vbmf_rank(cm.unfold(w, 1))) == (8, 6)
    w = planted_tucker(3, 11, noise=0.05, seed=1)
    assert (cm.vbmf_rank(cm.unfold(w, 0)), cm.vbmf_rank(cm.unfold(w, 1))) == (3, 11)


def test_vbmf_on_pure_noise_keeps_almost_nothing() -> None:
    w = torch.randn(64, 48, 3, 3, generator=torch.Generator().manual_seed(0))
    assert cm.vbmf_rank(cm.unfold(w, 0)) <= 2
    assert cm.vbmf_rank(torch.zeros(5, 7)) == 1  # degenerate input: the floor, not a crash


def test_energy_rank() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert [cm.energy_rank(s, e) for e in (0.5, 9 / 14, 0.9, 13 / 14 + 1e-9, 1.0)] == [1, 1, 2, 3, 3]
    w = planted_tucker(8, 6, noise=0.0)
    assert cm.energy_rank(cm.singular_values(w, 0), 0.999999) == 8


def test_tucker_error_falls_with_rank_and_is_exact_at_the_planted_rank() -> None:
    w = planted_tucker(8, 6, noise=0.0)
    errs = [cm.relative_error(w, cm.tucker2_full(*cm.tucker2(w, r, r))) for r in (1, 2, 4, 6)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    core, u_out, u_in = cm.tucker2(w, 8, 6)
    assert core.shape == (8, 6, 3, 3) and u_out.shape == (64, 8) and u_in.shape == (48, 6)
    assert cm.relative_error(w, cm.tucker2_full(core, u_out, u_in)) < 1e-5
    assert torch.allclose(u_out.T @ u_out, torch.eye(8), atol=1e-5)  # orthonormal factors


def test_hooi_does_not_lose_to_hosvd() -> None:
    w = torch.randn(32, 24, 3, 3, generator=torch.Generator().manual_seed(3))
    hosvd = cm.relative_error(w, cm.tucker2_full(*cm.tucker2(w, 6, 5, iters=0)))
    hooi = cm.relative_error(w, cm.tucker2_full(*cm.tucker2(w, 6, 5, iters=10)))
    assert hooi <= hosvd + 1e-9


def test_cp_recovers_a_planted_cp_tensor_and_error_falls_with_rank() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, y, x = (torch.randn(n, 5, generator=g) for n in (16, 12, 3, 3))
    w = cm.cp_full(a, b, y, x)  # [16, 12, 3, 3], CP rank <= 5
    assert cm.relative_error(w, cm.cp_full(*cm.cp_als(w, 5, iters=500))) < 1e-3
    noisy = torch.randn(16, 12, 3, 3, generator=g)
    errs = [cm.relative_error(noisy, cm.cp_full(*cm.cp_als(noisy, r, iters=100))) for r in (2, 8, 24)]
    assert errs[0] > errs[1] > errs[2], errs


def test_cp_is_deterministic_given_the_seed() -> None:
    w = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(1))
    f1, f2 = cm.cp_als(w, 7, iters=20, seed=4), cm.cp_als(w, 7, iters=20, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(f1, f2))


def test_ranks_for_a_parameter_ratio() -> None:
    r_out, r_in = cm.tucker_ranks_for_ratio(64, 32, 3, 3, 0.25)
    kept = 32 * r_in + r_in * r_out * 9 + r_out * 64
    assert kept <= 0.25 * 64 * 32 * 9 < 32 * (r_in + 1) + (r_in + 1) * (r_out + 2) * 9 + (r_out + 2) * 64
    r = cm.cp_rank_for_ratio(64, 32, 3, 3, 0.1)
    assert r * (64 + 32 + 6) <= 0.1 * 64 * 32 * 9 < (r + 1) * (64 + 32 + 6)


def test_bad_ranks_raise() -> None:
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="Tucker ranks"):
        cm.tucker2(w, 5, 1)
    with pytest.raises(ValueError, match="CP rank"):
        cm.cp_als(w, 0)
