"""Importance criteria against hand computations."""
from __future__ import annotations

import dataclasses
import math
from typing import get_args

import pytest
import torch

from slimkit.core.errors import ConfigError, MethodError
from slimkit.prune.importance import (
    CRITERIA,
    GroupInputs,
    Member,
    aggregate,
    bn_scale_scores,
    entropy_scores,
    fpgm_scores,
    get_criterion,
    head_importance,
    lp_scores,
    random_scores,
    score_group,
    taylor_scores,
)
from slimkit.prune.structured import Criterion as ChannelCriterion
from slimkit.prune.structured import HeadCriterion

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


def _two_layer_group() -> GroupInputs:
    """Units = W's 2 output rows (producer) = columns of a consumer ``C [3, 2]``."""
    c = torch.tensor([[1.0, 0.0], [2.0, 0.0], [2.0, 1.0]])  # column norms^2: 9, 1
    return GroupInputs(name="g", n_units=2, members=(
        Member(tensor=W, dim=0, units=torch.tensor([0, 1]), attr="weight", producer=True),
        Member(tensor=c, dim=1, units=torch.tensor([0, 1]), attr="weight"),
    ))


def test_registry_scores_a_group_through_one_table():
    g = _two_layer_group()
    # output_norm: the producer's rows only, squared L2 5 and 26, divided by their mean 15.5
    assert torch.allclose(score_group("output_norm", g), torch.tensor([5.0, 26.0]) / 15.5)
    # input_norm: the consumer's columns only (9 and 1, mean 5): the opposite ranking
    assert torch.allclose(score_group("input_norm", g), torch.tensor([9.0, 1.0]) / 5.0)
    # l1: both members, each mean-normalised: rows 3, 8 (mean 5.5) + columns 5, 1 (mean 3)
    assert torch.allclose(score_group("l1", g), torch.tensor([3 / 5.5 + 5 / 3, 8 / 5.5 + 1 / 3]))
    assert torch.equal(score_group("random", g), random_scores(2, 0))
    acts = torch.tensor([[0.0, 1.0], [1.0, 2.0], [0.0, 3.0], [1.0, 4.0]])  # unit 0: 2 values, unit 1: 4
    with_acts = dataclasses.replace(g, acts=((acts, torch.tensor([0, 1])),))
    ent = entropy_scores(acts, 1)
    assert torch.allclose(score_group("entropy", with_acts), (ent / ent.mean()).float())
    gates = torch.tensor([[1.0, -2.0], [-3.0, 0.0]])  # [K=2 batches, 2 heads]
    assert torch.allclose(score_group("head", dataclasses.replace(g, gates=gates)), torch.tensor([2.0, 1.0]))


def test_registry_names_needs_and_errors():
    assert {"l1", "l2", "taylor", "fpgm", "bn_scale", "entropy", "output_norm", "input_norm", "head",
            "random"} <= set(CRITERIA)
    assert CRITERIA["taylor"].needs == "grads" and CRITERIA["entropy"].needs == "acts"
    assert CRITERIA["head"].needs == "gates" and CRITERIA["l1"].needs is None
    assert get_criterion("l2") is CRITERIA["l2"]
    # every name the pruning configs accept is a registered criterion
    assert set(get_args(ChannelCriterion)) | set(get_args(HeadCriterion)) <= set(CRITERIA)
    with pytest.raises(ConfigError, match="expected one of"):
        get_criterion("l3")
    with pytest.raises(MethodError, match="bn_scale needs a BatchNorm"):
        score_group("bn_scale", _two_layer_group())
    with pytest.raises(MethodError, match="entropy"):
        score_group("entropy", _two_layer_group())  # no activations gathered
