"""Task and fidelity metrics against direct computations and scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.core.errors import DataError
from slimkit.measure import accuracy, cosine_fidelity, spearman, top1_agreement
from slimkit.measure.metrics import rankdata

scipy_stats = pytest.importorskip("scipy.stats")


def test_accuracy_from_logits_and_from_predictions() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.1, 0.3], [5.0, -1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 0])
    assert accuracy(logits, labels) == 0.5
    assert accuracy(torch.tensor([0, 1, 1, 0]), labels) == 1.0
    assert accuracy(np.array([1, 1, 1, 1]), [0, 1, 1, 0]) == 0.5
    with pytest.raises(DataError):
        accuracy(torch.tensor([0, 1, 1]), labels)
    with pytest.raises(DataError):
        accuracy(torch.tensor([]), torch.tensor([]))


def test_top1_agreement() -> None:
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0]])
    b = torch.tensor([[0.9, 0.1, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0]])
    assert top1_agreement(a, b) == pytest.approx(2 / 3)
    assert top1_agreement(a, a) == 1.0
    with pytest.raises(DataError):
        top1_agreement(a, b[:2])


def test_cosine_fidelity() -> None:
    torch.manual_seed(0)
    a = torch.randn(8, 5)
    assert cosine_fidelity(a, a * 3.0) == pytest.approx(1.0)
    assert cosine_fidelity(a, -a) == pytest.approx(-1.0)
    b = torch.randn(8, 5)
    expected = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
    assert cosine_fidelity(a, b) == pytest.approx(expected, abs=1e-6)


def test_rankdata_average_ties() -> None:
    got = rankdata(torch.tensor([10.0, 20.0, 10.0, 30.0, 20.0, 20.0]))
    assert got.tolist() == [1.5, 4.0, 1.5, 6.0, 4.0, 4.0]


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.floats(-3, 3, allow_nan=False, width=32)), min_size=3, max_size=40))
def test_spearman_matches_scipy_with_ties(pairs: list[tuple[int, float]]) -> None:
    x = np.array([p[0] for p in pairs], dtype=np.float64)  # small integers: many ties
    y = np.array([p[1] for p in pairs], dtype=np.float64)
    ours = spearman(x, y)
    ref = scipy_stats.spearmanr(x, y).statistic
    if math.isnan(ref):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(ref, abs=1e-9)


def test_spearman_edge_cases() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1.0, float("nan"), 3.0], [1, 2, 3]))
    with pytest.raises(DataError):
        spearman([1, 2], [1, 2, 3])
