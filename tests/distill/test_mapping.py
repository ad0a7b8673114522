"""Student <- teacher layer maps: examples, invariants and error messages."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from slimkit.core.errors import ConfigError
from slimkit.distill.mapping import LearnedLayerMap, explicit_map, last_k_map, uniform_map


@pytest.mark.parametrize(
    ("n_s", "n_t", "expected"),
    [(3, 6, [1, 3, 5]), (4, 12, [2, 5, 8, 11]), (6, 6, [0, 1, 2, 3, 4, 5]), (1, 12, [11]), (4, 6, [0, 2, 3, 5])],
)
def test_uniform_map_examples(n_s: int, n_t: int, expected: list[int]) -> None:
    assert uniform_map(n_s, n_t) == expected


def test_uniform_map_is_strictly_increasing_and_ends_at_last_layer() -> None:
    for n_t in range(1, 25):
        for n_s in range(1, n_t + 1):
            m = uniform_map(n_s, n_t)
            assert len(m) == n_s and m[-1] == n_t - 1 and m[0] >= 0
            assert all(a < b for a, b in itertools.pairwise(m))


def test_last_k_map_examples() -> None:
    assert last_k_map(3, 6) == [3, 4, 5]
    assert last_k_map(6, 12) == list(range(6, 12))
    assert last_k_map(2, 2) == [0, 1]


@pytest.mark.parametrize("fn", [uniform_map, last_k_map])
@pytest.mark.parametrize(("n_s", "n_t", "key"), [(7, 6, "n_student"), (0, 6, "n_student"), (2, 0, "n_teacher"),
                                                 (True, 6, "n_student"), (2.0, 6, "n_student")])
def test_fixed_maps_reject_bad_sizes(fn, n_s, n_t, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        fn(n_s, n_t)
    assert err.value.key == key
    assert isinstance(err.value, ValueError)


def test_explicit_map_validates_and_sorts() -> None:
    assert explicit_map({2: 11, 0: 3, 1: 3}, 3, 12) == {0: 3, 1: 3, 2: 11}
    assert list(explicit_map({2: 11, 0: 3}, 3, 12)) == [0, 2]  # partial maps allowed, sorted


@pytest.mark.parametrize(
    ("mapping", "match"),
    [({}, "non-empty"), ({3: 0}, r"\[0, 3\)"), ({0: 12}, r"\[0, 12\)"), ({-1: 0}, "-1"), ({0: -1}, "-1"),
     ({0: 1.0}, "1.0"), ({"0": 1}, "'0'"), ({0: True}, "True")],
)
def test_explicit_map_errors(mapping: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        explicit_map(mapping, 3, 12)
    assert err.value.key == "mapping"


def test_learned_layer_map_weights_sum_to_one_and_start_uniform() -> None:
    lm = LearnedLayerMap(3, 5)
    w = lm.weights()
    assert w.shape == (3, 5)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    torch.testing.assert_close(w, torch.full((3, 5), 0.2))
    with torch.no_grad():
        lm.logits.normal_()
    torch.testing.assert_close(lm.weights().sum(1), torch.ones(3))


def test_learned_layer_map_forward_is_weighted_sum_of_pair_losses() -> None:
    torch.manual_seed(0)
    lm = LearnedLayerMap(2, 3)
    with torch.no_grad():
        lm.logits.normal_()
    s = [torch.randn(2, 4) for _ in range(2)]
    t = [torch.randn(2, 4) for _ in range(3)]
    w = lm.weights().detach()
    ref = sum(w[i, j] * F.mse_loss(s[i], t[j]) for i in range(2) for j in range(3))
    torch.testing.assert_close(lm(s, t, F.mse_loss), ref)


def test_learned_layer_map_gradients_move_weight_to_matching_teacher_layer() -> None:
    torch.manual_seed(0)
    t = [torch.randn(4, 8) for _ in range(4)]
    s = [t[2].clone(), t[0] + 0.01 * torch.randn(4, 8)]  # student 0 copies teacher 2, student 1 ~ teacher 0
    lm = LearnedLayerMap(2, 4)
    lm(s, t, F.mse_loss).backward()
    g = lm.logits.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    opt = torch.optim.SGD(lm.parameters(), lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        lm(s, t, F.mse_loss).backward()
        opt.step()
    assert lm.weights().argmax(1).tolist() == [2, 0]
    torch.testing.assert_close(lm.weights().sum(1), torch.ones(2))


def test_learned_layer_map_checks_layer_counts() -> None:
    lm = LearnedLayerMap(2, 3)
    with pytest.raises(ValueError, match="expected 2 student and 3 teacher"):
        lm([torch.zeros(1)] * 2, [torch.zeros(1)] * 2, F.mse_loss)
    with pytest.raises(ConfigError):
        LearnedLayerMap(0, 3)
