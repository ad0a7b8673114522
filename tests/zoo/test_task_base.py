"""The pure pieces tasks share: metrics, deterministic batch streams, device moves."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slimkit.zoo.task_base import (
    EpochBatches,
    LazyBatches,
    accuracy,
    eval_mode,
    fixed_subset,
    model_device,
    outputs_of,
    pearson,
    spearman,
    to_device,
)


def test_spearman_is_rank_based_and_handles_ties() -> None:
    x = [1.0, 2.0, 3.0, 4.0]
    assert spearman(x, [10.0, 20.0, 30.0, 1000.0]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman(x, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ties get average ranks: ranks of y are [1.5, 1.5, 3, 4] -> Pearson of ranks
    assert spearman(x, [1.0, 1.0, 2.0, 3.0]) == pytest.approx(pearson([1, 2, 3, 4], [1.5, 1.5, 3, 4]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=3, max_size=30))
def test_pearson_matches_numpy(pairs: list[tuple[float, float]]) -> None:
    a, b = np.array(pairs).T
    if a.std() < 1e-3 or b.std() < 1e-3:
        return  # undefined for constant input
    assert pearson(a, b) == pytest.approx(float(np.corrcoef(a, b)[0, 1]), abs=1e-9)


def test_accuracy_checks_shapes() -> None:
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError, match="equal"):
        accuracy(torch.tensor([1, 2]), torch.tensor([1]))


def test_epoch_batches_are_deterministic_and_cover_each_epoch() -> None:
    stream = EpochBatches(10, 4, lambda i: i, epochs=2, seed=3)
    first, second = list(stream), list(stream)
    assert len(stream) == len(first) == 6
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert sorted(torch.cat(first[:3]).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(first[:3]), torch.cat(first[3:]))  # reshuffled per epoch
    dropped = EpochBatches(10, 4, lambda i: i, drop_last=True)
    assert len(dropped) == len(list(dropped)) == 2
    assert not torch.equal(torch.cat(list(EpochBatches(10, 10, lambda i: i, seed=4))), torch.cat(first[:3]))


def test_fixed_subset_and_lazy_batches() -> None:
    a = fixed_subset(100, 30)
    assert torch.equal(a, fixed_subset(100, 30)) and len(set(a.tolist())) == 30
    assert len(fixed_subset(5, 30)) == 5
    calls: list[slice] = []
    lazy = LazyBatches(7, 3, lambda s: calls.append(s) or s.stop - s.start)
    assert calls == [] and len(lazy) == 3
    assert list(lazy) == [3, 3, 1] and len(calls) == 3  # built on access, each slice once per pass


def test_outputs_of_restores_mode_and_moves_batches() -> None:
    net = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).train()
    batch = {"x": torch.ones(4, 3)}
    out = outputs_of(nn.Sequential(), [torch.ones(2, 3)])
    assert out.shape == (2, 3)
    res = outputs_of(net, [torch.ones(4, 3), torch.ones(1, 3)])
    assert res.shape == (5, 2) and net.training  # dropout was off during, training mode restored after
    assert torch.allclose(res[0], res[4])
    moved = to_device((batch, [torch.zeros(1)], "keep"), torch.device("cpu"))
    assert isinstance(moved, tuple) and isinstance(moved[1], list) and moved[2] == "keep"
    assert model_device(net) == torch.device("cpu") and model_device(nn.ReLU()) == torch.device("cpu")
    with eval_mode(net):
        assert not net.training and not torch.is_grad_enabled()
