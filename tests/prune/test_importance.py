"""Importance criteria against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.prune.importance import (
    CRITERIA,
    aggregate,
    bn_scale_scores,
    entropy_scores,
    fpgm_scores,
    get_criterion,
    head_importance,
    lp_scores,
    random_scores,
    taylor_scores,
)

W = torch.tensor([[1.0, -2.0, 0.0], [3.0, 4.0, -1.0]])  # Linear weight [out=2, in=3]


def test_lp_scores_rows_and_columns_by_hand():
    assert torch.allclose(lp_scores(W, 0, p=1), torch.tensor([3.0, 8.0]))
    assert torch.allclose(lp_scores(W, 0, p=2), torch.tensor([math.sqrt(5), math.sqrt(26)]))
    assert torch.allclose(lp_scores(W, 1, p=1), torch.tensor([4.0, 6.0, 1.0]))  # consumer's input columns
    assert torch.allclose(lp_scores(W, -1, p=1), lp_scores(W, 1, p=1))


def test_lp_scores_conv_kernel_output_channels():
    w = torch.randn(4, 3, 2, 2)
    expected = torch.stack([w[i].abs().sum() for i in range(4)])
    assert torch.allclose(lp_scores(w, 0), expected)
    expected_in = torch.stack([w[:, j].pow(2).sum().sqrt() for j in range(3)])
    assert torch.allclose(lp_scores(w, 1, p=2), expected_in)


def test_taylor_is_abs_of_summed_contribution_not_sum_of_abs():
    g = torch.tensor([[1.0, 1.0, 5.0], [1.0, -1.0, 2.0]])
    # row 0: 1*1 + -2*1 + 0*5 = -1 -> 1 ; row 1: 3 - 4 - 2 = -3 -> 3
    assert torch.allclose(taylor_scores(W, g, 0), torch.tensor([1.0, 3.0]))
    # columns: col0 1+3=4, col1 -2-4=-6 -> 6, col2 0-2 -> 2
    assert torch.allclose(taylor_scores(W, g, 1), torch.tensor([4.0, 6.0, 2.0]))


def test_taylor_stacked_batches_average_per_batch_scores():
    g1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    g2 = -g1
    stacked = torch.stack([g1, g2])  # [K=2, 2, 3]
    # per batch |1| and |4| each time -> mean 1, 4 ; the summed gradient would give 0
    assert torch.allclose(taylor_scores(W, stacked, 0), torch.tensor([1.0, 4.0]))
    assert torch.allclose(taylor_scores(W, g1 + g2, 0), torch.zeros(2))
    assert torch.allclose(taylor_scores(W, stacked, -1), torch.tensor([1.0, 4.0, 0.0]))
    with pytest.raises(ValueError, match="grad of shape"):
        taylor_scores(W, torch.zeros(3, 2), 0)


def test_fpgm_sum_of_distances_and_median_filter_scores_lowest():
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # three filters on a line
    # distances: f0 -> 1 + 2 = 3 ; f1 -> 1 + 1 = 2 ; f2 -> 2 + 1 = 3
    s = fpgm_scores(w, 0)
    assert torch.allclose(s, torch.tensor([3.0, 2.0, 3.0]), atol=1e-5)
    assert int(s.argmin()) == 1  # the geometric median is the redundant one


def test_bn_scale_scores_abs_gamma():
    assert torch.equal(bn_scale_scores(torch.tensor([-0.5, 0.1, 2.0])), torch.tensor([0.5, 0.1, 2.0]))
    with pytest.raises(ValueError):
        bn_scale_scores(torch.zeros(2, 2))


def test_entropy_by_hand():
    acts = torch.zeros(8, 3)  # [B, C]
    acts[:, 0] = 5.0  # constant -> 0
    acts[:, 1] = torch.tensor([0.0, 1.0] * 4)  # two equally likely bins -> ln 2
    acts[:, 2] = torch.arange(8.0)  # 8 values spread over 8 of 32 bins, uniform -> ln 8
    s = entropy_scores(acts, dim=1, bins=32)
    assert torch.allclose(s, torch.tensor([0.0, math.log(2), math.log(8)]), atol=1e-5)
    # conv maps: channel dim 1 of [B, C, H, W]
    maps = torch.randn(2, 4, 3, 3)
    maps[:, 2] = 1.0
    s4 = entropy_scores(maps, dim=1, bins=8)
    assert s4.shape == (4,) and s4[2] == 0 and bool((s4[[0, 1, 3]] > 0).all())


def test_head_importance_is_mean_over_examples_of_abs_sum():
    a = torch.zeros(2, 3, 2, 2)  # [B, H, T, T]
    g = torch.zeros(2, 3, 2, 2)
    a[0, 0], g[0, 0] = 1.0, 1.0  # example 0 head 0: sum = 4
    a[1, 0], g[1, 0] = 1.0, -1.0  # example 1 head 0: sum = -4 -> |.| = 4 (does not cancel)
    a[0, 2, 0, 0], g[0, 2, 0, 0] = 0.5, 2.0  # example 0 head 2: 1
    s = head_importance(a, g)
    assert torch.allclose(s, torch.tensor([4.0, 0.0, 0.5]))
    assert torch.allclose(head_importance(a[0], g[0]), torch.tensor([4.0, 0.0, 1.0]))


def test_random_scores_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_scores(10, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert torch.equal(a, random_scores(10, seed=7))
    assert not torch.equal(a, random_scores(10, seed=8))


def test_aggregate_modes_and_normalisation():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([30.0, 20.0, 10.0])
    assert torch.allclose(aggregate([a, b]), torch.tensor([31.0, 22.0, 13.0]))
    assert torch.allclose(aggregate([a, b], "mean"), torch.tensor([15.5, 11.0, 6.5]))
    assert torch.allclose(aggregate([a, b], "max"), b)
    assert torch.allclose(aggregate([a, b], "prod"), torch.tensor([30.0, 40.0, 30.0]))
    # mean-normalised: a/2 + b/20 -> [0.5+1.5, 1+1, 1.5+0.5]; without it b dominates
    assert torch.allclose(aggregate([a, b], normalize="mean"), torch.tensor([2.0, 2.0, 2.0]))
    assert torch.allclose(aggregate([a, b], normalize="max"), torch.tensor([1 / 3 + 1, 2 / 3 + 2 / 3, 1 + 1 / 3]))
    with pytest.raises(ValueError):
        aggregate([a, torch.ones(4)])
    with pytest.raises(ValueError):
        aggregate([a], how="median")


def test_registry_names_and_unknown_error():
    assert torch.allclose(CRITERIA["l1"](W, 0), torch.tensor([3.0, 8.0]))
    assert torch.allclose(get_criterion("l2")(W, dim=0), lp_scores(W, 0, p=2))
    assert {"taylor", "fpgm", "bn_scale", "entropy", "head", "random"} <= set(CRITERIA)
    with pytest.raises(ConfigError, match="expected one of"):
        get_criterion("l3")
