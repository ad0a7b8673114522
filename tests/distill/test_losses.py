"""Properties of the distillation losses: zeros, references, invariances, masks, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.distill.losses import (
    attention_kl,
    attention_mse,
    attention_transfer,
    cosine_loss,
    fsp_loss,
    fsp_matrix,
    hidden_mse,
    kd_loss,
    logit_mse,
    minilm_relation_loss,
    rkd_angle_loss,
    rkd_distance_loss,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _mask() -> torch.Tensor:
    # two sequences of length 5: 3 and 5 real tokens
    return torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)


def _perturb_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace every padded token position (dim 1) of ``x`` [B, T, ...] with noise."""
    pad = ~mask.reshape(*mask.shape, *([1] * (x.dim() - 2)))
    return torch.where(pad, torch.randn_like(x) * 10, x)


def _orthogonal(d: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    return q


# --------------------------------------------------------------------------- kd_loss


def test_kd_loss_zero_for_equal_logits_and_pure_kd() -> None:
    t = torch.randn(8, 10)
    assert kd_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(t + 1.0, t).item() == pytest.approx(0.0, abs=1e-6)  # softmax shift invariance
    assert kd_loss(torch.randn(8, 10), t).item() > 1e-3


def test_kd_loss_mixes_hard_label_ce_by_alpha() -> None:
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    soft = kd_loss(s, t, temperature=3.0)
    ce = F.cross_entropy(s, y)
    got = kd_loss(s, t, y, temperature=3.0, alpha=0.3)
    torch.testing.assert_close(got, 0.3 * soft + 0.7 * ce)
    torch.testing.assert_close(kd_loss(s, t, y, alpha=0.0), ce)
    torch.testing.assert_close(kd_loss(t, t, y, alpha=0.25), 0.75 * F.cross_entropy(t, y), atol=1e-6, rtol=0)


def test_kd_loss_gradient_matches_hand_formula() -> None:
    # d/ds [T^2 KL(p_t || p_s)] / N = T * (softmax(s/T) - softmax(t/T)) / N
    temp, n = 2.5, 4
    s = torch.randn(n, 7, requires_grad=True)
    t = torch.randn(n, 7)
    kd_loss(s, t, temperature=temp).backward()
    expected = temp * (torch.softmax(s.detach() / temp, -1) - torch.softmax(t / temp, -1)) / n
    torch.testing.assert_close(s.grad, expected)


def test_kd_loss_gradcheck_with_labels() -> None:
    s = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, y, temperature=2.0, alpha=0.6), (s,))


def test_kd_loss_t_squared_keeps_magnitude_across_temperatures() -> None:
    # As T grows, KL * T^2 tends to mean_rows (1/2C) * sum_c (d_c - mean(d))^2 with d = t - s;
    # without the T^2 factor the loss would drop 4x from T=25 to T=50.
    s, t = torch.randn(16, 10, dtype=torch.float64), torch.randn(16, 10, dtype=torch.float64)
    d = t - s
    limit = ((d - d.mean(-1, keepdim=True)).pow(2).sum(-1) / (2 * d.shape[-1])).mean()
    l25, l50 = kd_loss(s, t, temperature=25.0), kd_loss(s, t, temperature=50.0)
    assert l25.item() == pytest.approx(limit.item(), rel=0.05)
    assert l50.item() == pytest.approx(limit.item(), rel=0.02)
    assert 0.9 < (l50 / l25).item() < 1.1


def test_kd_loss_token_level_ignores_minus_100_labels() -> None:
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    y = torch.tensor([[1, -100, 2], [0, 4, -100]])
    keep = y.reshape(-1) != -100
    ce = F.cross_entropy(s.reshape(-1, 5)[keep], y.reshape(-1)[keep])
    torch.testing.assert_close(kd_loss(s, t, y, alpha=0.0), ce)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"alpha": 1.5}, {"alpha": -0.1}])
def test_kd_loss_rejects_bad_hyperparameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), **kwargs)


def test_kd_loss_rejects_class_count_mismatch() -> None:
    with pytest.raises(ValueError, match="shapes must match"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_logit_mse_is_mean_squared_difference() -> None:
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(logit_mse(s, t), ((s - t) ** 2).mean())
    assert logit_mse(t, t).item() == 0.0
    # unlike KD, a constant shift of the logits is penalised
    assert logit_mse(t + 1.0, t).item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- hidden states


def test_hidden_mse_projects_student_width_and_trains_proj() -> None:
    proj = nn.Linear(4, 8)
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 8)
    loss = hidden_mse(s, t, proj)
    torch.testing.assert_close(loss, ((proj(s) - t) ** 2).mean())
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pass proj"):
        hidden_mse(s, t)


def test_hidden_mse_mask_ignores_padding() -> None:
    mask = _mask()
    s, t = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    loss = hidden_mse(s, t, mask=mask)
    torch.testing.assert_close(loss, hidden_mse(_perturb_padding(s, mask), _perturb_padding(t, mask), mask=mask))
    torch.testing.assert_close(loss, ((s - t) ** 2)[mask].mean())
    assert not torch.allclose(loss, hidden_mse(s, t))  # the padded tokens did matter unmasked


def test_cosine_loss_on_sentence_embeddings() -> None:
    a = torch.randn(4, 8)
    assert cosine_loss(3.0 * a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_loss(-a, a).item() == pytest.approx(2.0, abs=1e-6)
    b = torch.randn(4, 8)
    torch.testing.assert_close(cosine_loss(a, b), (1 - F.cosine_similarity(a, b, dim=-1)).mean())


def test_cosine_loss_mask_ignores_padding() -> None:
    mask = _mask()
    a, b = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    loss = cosine_loss(a, b, mask)
    torch.testing.assert_close(loss, cosine_loss(_perturb_padding(a, mask), _perturb_padding(b, mask), mask))
    torch.testing.assert_close(loss, (1 - F.cosine_similarity(a[mask], b[mask], dim=-1)).mean())
    with pytest.raises(ValueError, match="mask"):
        cosine_loss(a[:, 0], b[:, 0], mask)


# --------------------------------------------------------------------------- attention maps


def _attn(b: int, h: int, n: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    scores = torch.randn(b, h, n, n)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1)  # [B, H, T, T]


def test_attention_kl_equals_torch_kl_div() -> None:
    s, t = _attn(2, 3, 5), _attn(2, 3, 5)
    ref = F.kl_div(s.log(), t, reduction="sum") / (2 * 3 * 5)  # mean over (batch, head, query row)
    torch.testing.assert_close(attention_kl(s, t), ref)
    assert attention_kl(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_mask_ignores_padded_rows_and_columns() -> None:
    mask = _mask()
    s, t = _attn(2, 3, 5, mask), _attn(2, 3, 5, mask)
    loss = attention_kl(s, t, mask)
    # reference: each sequence cut to its real tokens
    total = sum(F.kl_div(s[b, :, :n, :n].log(), t[b, :, :n, :n], reduction="sum") for b, n in ((0, 3), (1, 5)))
    torch.testing.assert_close(loss, total / (3 * 8))
    pad_pair = ~(mask[:, :, None] & mask[:, None, :])[:, None]  # [B, 1, T, T]
    noisy_s = torch.where(pad_pair, torch.rand_like(s), s)
    noisy_t = torch.where(pad_pair, torch.rand_like(t), t)
    torch.testing.assert_close(loss, attention_kl(noisy_s, noisy_t, mask))


def test_attention_losses_head_mismatch() -> None:
    s, t = _attn(2, 2, 4), _attn(2, 4, 4)
    for fn in (attention_kl, attention_mse):
        with pytest.raises(ValueError, match="heads='mean'"):
            fn(s, t)
        got = fn(s, t, heads="mean")
        torch.testing.assert_close(got, fn(s.mean(1, keepdim=True), t.mean(1, keepdim=True)))


def test_attention_mse_reference_and_mask() -> None:
    mask = _mask()
    s, t = _attn(2, 3, 5, mask), _attn(2, 3, 5, mask)
    torch.testing.assert_close(attention_mse(s, t), ((s - t) ** 2).mean())
    pair = (mask[:, :, None] & mask[:, None, :])[:, None].expand_as(s)  # [B, H, T, T]
    loss = attention_mse(s, t, mask)
    torch.testing.assert_close(loss, ((s - t) ** 2)[pair].mean())
    torch.testing.assert_close(loss, attention_mse(torch.where(pair, s, torch.rand_like(s)), t, mask))


# --------------------------------------------------------------------------- MiniLM relations


def _pad_width(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Double each relation head's width with zeros, rescaled so x_h . y_h / sqrt(d) is unchanged."""
    b, n, d = x.shape
    xh = x.reshape(b, n, n_heads, d // n_heads)
    wide = torch.cat([xh, torch.zeros_like(xh)], -1) * 2 ** 0.25  # [B, T, R, 2d]
    return wide.reshape(b, n, 2 * d)


def test_minilm_relation_loss_zero_for_identical_qkv() -> None:
    q, k, v = (torch.randn(2, 5, 12) for _ in range(3))
    assert minilm_relation_loss(q, k, v, q, k, v, 4).item() == pytest.approx(0.0, abs=1e-6)
    assert minilm_relation_loss(q, k, v, q, k, v, 3, _mask()).item() == pytest.approx(0.0, abs=1e-6)


def test_minilm_relation_loss_invariant_to_student_width() -> None:
    t_q, t_k, t_v = (torch.randn(2, 5, 12) for _ in range(3))
    s = [torch.randn(2, 5, 8) for _ in range(3)]
    narrow = minilm_relation_loss(*s, t_q, t_k, t_v, 2)
    wide = minilm_relation_loss(*(_pad_width(x, 2) for x in s), t_q, t_k, t_v, 2)
    assert narrow.item() > 1e-3
    torch.testing.assert_close(narrow, wide)


def test_minilm_relation_loss_is_sum_of_three_relation_kls() -> None:
    s = [torch.randn(1, 4, 6, dtype=torch.float64) for _ in range(3)]
    t = [torch.randn(1, 4, 6, dtype=torch.float64) for _ in range(3)]

    def rel(x: torch.Tensor) -> torch.Tensor:  # one relation head, by hand
        return (x[0] @ x[0].T / math.sqrt(6)).softmax(-1)  # [T, T]

    ref = sum(F.kl_div(rel(a).log(), rel(b), reduction="sum") / 4 for a, b in zip(s, t))
    torch.testing.assert_close(minilm_relation_loss(*s, *t, 1), ref)


def test_minilm_relation_loss_mask_ignores_padding_and_has_finite_grads() -> None:
    mask = _mask()
    s = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(3)]
    t = [torch.randn(2, 5, 12) for _ in range(3)]
    loss = minilm_relation_loss(*s, *t, 4, mask)
    noisy = minilm_relation_loss(*(_perturb_padding(x.detach(), mask) for x in s),
                                 *(_perturb_padding(x, mask) for x in t), 4, mask)
    torch.testing.assert_close(loss, noisy)
    loss.backward()
    for x in s:
        assert torch.isfinite(x.grad).all()
        assert x.grad[0, 3:].abs().sum() == 0  # padded tokens get no gradient
    with pytest.raises(ValueError, match="divisible"):
        minilm_relation_loss(*s, *t, 5)


# --------------------------------------------------------------------------- conv feature maps


def test_attention_transfer_zero_and_scale_invariant() -> None:
    s, t = torch.randn(2, 4, 6, 6), torch.randn(2, 16, 6, 6)
    assert attention_transfer(t, t).item() == pytest.approx(0.0, abs=1e-7)
    loss = attention_transfer(s, t)
    assert loss.item() > 1e-4
    torch.testing.assert_close(attention_transfer(3.7 * s, 0.2 * t), loss)
    torch.testing.assert_close(attention_transfer(-s, t), loss)  # |A|^p ignores sign
    with pytest.raises(ValueError, match="spatial"):
        attention_transfer(s, torch.randn(2, 16, 3, 3))


def test_fsp_matrix_and_loss() -> None:
    f1, f2 = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    g = fsp_matrix(f1, f2)
    torch.testing.assert_close(g, torch.einsum("bihw,bjhw->bij", f1, f2) / 20)
    assert g.shape == (2, 3, 6)
    assert fsp_loss(f1, f2, f1.clone(), f2.clone()).item() == 0.0
    assert fsp_loss(f1, f2, torch.randn_like(f1), f2).item() > 1e-3
    with pytest.raises(ValueError, match="shapes must match"):
        fsp_loss(f1, f2, torch.randn(2, 4, 4, 5), f2)
    with pytest.raises(ValueError, match="spatial"):
        fsp_matrix(f1, torch.randn(2, 6, 2, 5))


# --------------------------------------------------------------------------- relational KD


def test_rkd_distance_invariant_to_scale_and_rotation() -> None:
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    loss = rkd_distance_loss(s, t)
    assert loss.item() > 1e-3
    torch.testing.assert_close(rkd_distance_loss(4.0 * s @ _orthogonal(5), t), loss)
    torch.testing.assert_close(rkd_distance_loss(s, 0.1 * t @ _orthogonal(9)), loss)
    assert rkd_distance_loss(2.0 * t @ _orthogonal(9), t).item() == pytest.approx(0.0, abs=1e-10)


def test_rkd_angle_invariant_to_rotation_and_scale() -> None:
    s, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    loss = rkd_angle_loss(s, t)
    assert loss.item() > 1e-3
    torch.testing.assert_close(rkd_angle_loss(s @ _orthogonal(4), t), loss)
    torch.testing.assert_close(rkd_angle_loss(3.0 * s + 1.0, t), loss)
    assert rkd_angle_loss(t @ _orthogonal(7), t).item() == pytest.approx(0.0, abs=1e-10)


def test_rkd_losses_have_finite_grads_and_validate_batch() -> None:
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 6)
    (rkd_distance_loss(s, t) + rkd_angle_loss(s, t)).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 3"):
        rkd_angle_loss(s[:2], t[:2])
    with pytest.raises(ValueError, match="same N"):
        rkd_distance_loss(s, t[:3])
