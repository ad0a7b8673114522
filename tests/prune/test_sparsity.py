"""Pure mask / saliency math of slimkit.prune.sparsity against brute-force references."""
from __future__ import annotations

import pytest
import torch

from slimkit.prune.masks import topk_mask
from slimkit.prune.sparsity import (
    block_mask,
    block_scores,
    class_distribution_masks,
    class_uniform_masks,
    nm_mask,
    nm_ok,
    obd_saliency,
    reconstruction_error,
    rowwise_mask,
    sparsegpt_prune,
    wanda_scores,
    weight_class,
)


def _correlated_inputs(n: int = 512, d: int = 64, seed: int = 0) -> torch.Tensor:
    """Inputs with a shared component, mixed features and very different feature scales."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / 8
    z = torch.randn(n, d, generator=g)
    common = torch.randn(n, 1, generator=g)
    scales = torch.linspace(0.1, 3.0, d)[torch.randperm(d, generator=g)]
    return (z @ mix + 0.5 * common + torch.randn(n, d, generator=g) * scales).double()  # [N, d]


def _lstsq_on_mask(w: torch.Tensor, keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Best weights with the given zero pattern: per-row least squares of x w_r on the kept columns."""
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        idx = keep[r].nonzero().squeeze(1)
        out[r, idx] = torch.linalg.lstsq(x[:, idx], (x @ w[r]).unsqueeze(1)).solution.squeeze(1)
    return out


def test_weight_class_defaults_and_overrides() -> None:
    assert weight_class("encoder.layer.0.attention.self.query", "Linear") == "attention"
    assert weight_class("encoder.layer.0.attention.output.dense", "Linear") == "attention"
    assert weight_class("encoder.layer.0.intermediate.dense", "Linear") == "ffn"
    assert weight_class("layers.3.mlp.fc1", "Linear") == "ffn"
    assert weight_class("embeddings.word_embeddings", "Embedding") == "embedding"
    assert weight_class("features.0", "Conv2d") == "conv2d"
    assert weight_class("classifier", "Linear") == "linear"
    assert weight_class("keypoint_head", "Linear") == "linear"  # "key" only as a whole name part
    classes = {"head": ("classifier*",), "early": ("re:features\\.[0-2]",)}
    assert weight_class("classifier.2", "Linear", classes) == "head"
    assert weight_class("features.1", "Conv2d", classes) == "early"
    assert weight_class("features.7", "Conv2d", classes) == "conv2d"


def test_class_uniform_prunes_every_class_to_the_target() -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(100, generator=g) * s for s in (1.0, 100.0, 2.0, 50.0)]
    labels = ["a", "b", "a", "b"]
    masks = class_uniform_masks(scores, labels, 0.6)
    for label in ("a", "b"):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        kept = sum(int(masks[i].sum()) for i in idx)
        assert kept == 80  # 40 % of 200 in each class
        # one threshold per class: every kept score beats every dropped score of the class
        kept_min = min(float(scores[i][masks[i]].min()) for i in idx)
        drop_max = max(float(scores[i][~masks[i]].max()) for i in idx)
        assert kept_min >= drop_max
    # within class "a" the larger-scale tensor keeps more
    assert masks[2].sum() > masks[0].sum()


def test_class_distribution_is_lambda_sigma_rule() -> None:
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(200, generator=g) * 0.01, torch.randn(300, generator=g) * 1.0, torch.randn(50, generator=g)]
    labels = ["small", "big", "big"]
    sig_small = float(weights[0].std())
    sig_big = float(torch.cat([weights[1], weights[2]]).std())
    masks, lam = class_distribution_masks(weights, labels, lam=0.5)
    assert lam == 0.5
    assert torch.equal(masks[0], weights[0].abs() >= 0.5 * sig_small)
    assert torch.equal(masks[1], weights[1].abs() >= 0.5 * sig_big)
    # solved lambda: the sparsity is reached and the masks are the lambda rule for the returned lambda
    masks, lam = class_distribution_masks(weights, labels, sparsity=0.7)
    assert sum(int((~m).sum()) for m in masks) == round(0.7 * 550)
    for w, m, s in zip(weights, masks, (sig_small, sig_big, sig_big)):
        assert bool((w.abs()[~m] <= lam * s + 1e-9).all()) and bool((w.abs()[m] >= lam * s - 1e-9).all())
    # both classes are pruned at comparable rates despite a 100x scale difference
    assert 0.5 < float((~masks[0]).float().mean()) < 0.9


def test_obd_saliency_matches_brute_force_loss_increase_on_quadratic() -> None:
    g = torch.Generator().manual_seed(2)
    w_star = torch.randn(12, generator=g)
    h = torch.rand(12, generator=g) * 10 + 0.1  # diagonal Hessian with very different curvatures

    def loss(w: torch.Tensor) -> float:
        return float(0.5 * (h * (w - w_star) ** 2).sum() + 3.0)  # minimum at w_star

    brute = torch.tensor([loss(torch.where(torch.arange(12) == i, 0.0, w_star)) - loss(w_star) for i in range(12)])
    sal = obd_saliency(w_star, h)
    assert torch.allclose(sal, brute, rtol=1e-5)
    assert torch.equal(torch.argsort(sal), torch.argsort(brute))
    # ... and the ordering differs from plain magnitude on this problem (OBD is not |w|)
    assert not torch.equal(torch.argsort(sal), torch.argsort(w_star.abs()))


def test_sparsegpt_beats_magnitude_and_wanda_and_is_near_optimal_for_its_mask() -> None:
    x = _correlated_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    new, keep = sparsegpt_prune(w, x.T @ x, 0.5)
    assert int((~keep).sum()) == 32 * 32 and torch.equal(new == 0, ~keep)
    err_sgpt = reconstruction_error(w, new, x)
    err_mag = reconstruction_error(w, w * topk_mask(w.abs(), 0.5), x)
    err_same_mask_no_update = reconstruction_error(w, w * keep, x)
    assert err_sgpt < 0.75 * err_mag
    assert err_sgpt < 0.95 * err_same_mask_no_update  # the OBS weight update does real work
    # near the least-squares optimum for the chosen zero pattern (greedy column order costs a little)
    assert err_sgpt <= 1.15 * reconstruction_error(w, _lstsq_on_mask(w, keep, x), x)
    # sparsity 0 changes nothing
    same, keep0 = sparsegpt_prune(w, x.T @ x, 0.0)
    assert bool(keep0.all()) and torch.allclose(same, w, atol=1e-8)


def test_sparsegpt_single_prune_is_the_exact_obs_update() -> None:
    """Pruning only the first column is one OBS step: it must equal the least-squares optimum."""
    x = _correlated_inputs(d=16)
    w = torch.randn(3, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    w[:, 0] = 1e-3  # the smallest OBS score in every row by far
    new, keep = sparsegpt_prune(w, x.T @ x, 3 / 48, damp=1e-10)
    assert not bool(keep[:, 0].any()) and bool(keep[:, 1:].all())
    assert torch.allclose(new, _lstsq_on_mask(w, keep, x), atol=1e-6)


def test_sparsegpt_nm_mode_and_small_blocks() -> None:
    x = _correlated_inputs(d=32)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    new, keep = sparsegpt_prune(w, x.T @ x, n=2, m=4, blocksize=8)
    assert nm_ok(keep, 2, 4) and int(keep.sum()) == 16 * 16
    assert reconstruction_error(w, new, x) < reconstruction_error(w, w * nm_mask(w.abs(), 2, 4), x)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_prune(w, torch.eye(8), 0.5)


def test_wanda_is_rowwise_and_beats_magnitude() -> None:
    x = _correlated_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    norms = x.norm(dim=0)  # [in]
    keep = rowwise_mask(wanda_scores(w, norms), 0.5)
    assert bool((keep.sum(1) == 32).all())  # exactly half of every output row
    brute = torch.zeros_like(keep)
    for r in range(32):  # brute force: the 32 largest |w| * ||x|| of each row
        brute[r, sorted(range(64), key=lambda j: -float(w[r, j].abs() * norms[j]))[:32]] = True
    assert torch.equal(keep, brute)
    assert reconstruction_error(w, w * keep, x) < reconstruction_error(w, w * topk_mask(w.abs(), 0.5), x)
    # with equal input norms Wanda is row-wise magnitude pruning
    assert torch.equal(rowwise_mask(wanda_scores(w, torch.ones(64)), 0.5), rowwise_mask(w.abs(), 0.5))


def test_block_mask_keeps_the_strongest_blocks() -> None:
    w = torch.zeros(8, 10)
    w[0:4, 4:8] = 5.0  # strongest block
    w[4:8, 0:4] = torch.tensor([[0.0, 0.0, 0.0, 3.0]] * 4)  # max 3, l2 6
    w[0:4, 0:4] = 2.0  # max 2, l2 8
    w[4:8, 8:10] = 0.1  # padded edge block
    assert block_scores(w, (4, 4)).shape == (2, 3)
    assert torch.equal(block_scores(w, (4, 4), "max"), torch.tensor([[2.0, 5.0, 0.0], [3.0, 0.0, 0.1]]))
    keep = block_mask(w, (4, 4), 4 / 6, "max")  # keep 2 of 6 blocks
    assert keep.shape == w.shape and bool(keep[0:4, 4:8].all()) and bool(keep[4:8, 0:4].all())
    assert int(keep.sum()) == 32
    keep_l2 = block_mask(w, (4, 4), 4 / 6, "l2")  # L2 prefers the uniform 2.0 block over the single-column 3.0
    assert bool(keep_l2[0:4, 0:4].all()) and not bool(keep_l2[4:8, 0:4].any())
    conv = torch.randn(8, 4, 3, 3)
    assert block_mask(conv, (2, 6), 0.5).shape == conv.shape


def test_nm_mask_exact_counts_and_largest_kept() -> None:
    g = torch.Generator().manual_seed(6)
    s = torch.rand(6, 16, generator=g)
    keep = nm_mask(s, 2, 4)
    groups_k = keep.reshape(6, 4, 4)
    groups_s = s.reshape(6, 4, 4)
    assert bool((groups_k.sum(-1) == 2).all())
    top2 = groups_s.sort(-1, descending=True).values[..., 1:2]  # second-largest of each group
    assert bool((groups_s[groups_k] >= top2.expand_as(groups_s)[groups_k]).all())
    # conv kernels are grouped along input channels (channels-last)
    conv = torch.rand(3, 8, 2, 2, generator=g)
    ck = nm_mask(conv, 1, 4)
    assert ck.shape == conv.shape
    assert bool((ck.permute(0, 2, 3, 1).reshape(3, 2, 2, 2, 4).sum(-1) == 1).all())
    assert nm_ok(ck, 1, 4) and not nm_ok(torch.ones(3, 8, 2, 2, dtype=torch.bool), 1, 4)
    with pytest.raises(ValueError, match="multiple of m"):
        nm_mask(torch.rand(4, 10), 2, 4)
