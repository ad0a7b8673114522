"""Allocation of kept units per group."""
from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.prune.allocation import allocate, keep_count


def _s(*v: float) -> torch.Tensor:
    return torch.tensor(v)


def test_uniform_keeps_top_scores_sorted():
    out = allocate({"a": _s(5, 1, 4, 2, 3, 0, 9, 8, 7, 6)}, 0.3)
    assert out["a"].dtype == torch.long
    assert out["a"].tolist() == [0, 2, 4, 6, 7, 8, 9]  # drops the 3 lowest: idx 5 (0), 1 (1), 3 (2)


def test_ratio_zero_keeps_everything_and_near_one_keeps_min_keep():
    s = {"a": torch.arange(10.0), "b": torch.arange(3.0)}
    zero = allocate(s, 0.0)
    assert zero["a"].tolist() == list(range(10)) and zero["b"].tolist() == [0, 1, 2]
    high = allocate(s, 0.99)
    assert high["a"].tolist() == [9] and high["b"].tolist() == [2]  # min_keep=1 floor
    assert allocate(s, 0.99, min_keep=2)["a"].tolist() == [8, 9]
    assert allocate(s, 0.99, min_keep=5)["b"].tolist() == [0, 1, 2]  # never above the group size


def test_round_to_multiples_and_small_groups():
    assert keep_count(64, 0.3, round_to=8) == 48  # 64 - 19 = 45 -> nearest multiple 48
    assert keep_count(64, 0.5, round_to=8) == 32
    assert keep_count(64, 0.35, round_to=8) == 40  # 64 - 22 = 42 -> 40
    assert keep_count(20, 0.9, round_to=8) == 8  # 2 rounds down to 0 -> smallest multiple 8
    assert keep_count(12, 0.1, round_to=8) == 8  # 11: nearest 8 (16 would exceed the group)
    assert keep_count(4, 0.5, round_to=8) == 4  # group smaller than round_to stays whole
    assert keep_count(10, 0.0, round_to=8) == 10  # ratio 0 is untouched even if not a multiple
    out = allocate({"a": torch.arange(64.0)}, 0.3, round_to=8)
    assert out["a"].tolist() == list(range(16, 64))


def test_ties_break_towards_lower_index_deterministically():
    out = allocate({"a": torch.ones(6)}, 0.5)
    assert out["a"].tolist() == [0, 1, 2]
    out = allocate({"a": _s(1, 2, 2, 2, 0)}, 0.4)  # keep 3 of the three 2s
    assert out["a"].tolist() == [1, 2, 3]


def test_per_group_ratio_exact_and_pattern():
    s = {"enc.0": torch.arange(10.0), "enc.1": torch.arange(10.0), "head": torch.arange(10.0)}
    out = allocate(s, 0.5, per_group_ratio={"enc.*": 0.2, "head": 0.0})
    assert len(out["enc.0"]) == 8 and len(out["enc.1"]) == 8 and len(out["head"]) == 10
    exact_first = allocate(s, 0.5, per_group_ratio={"enc.*": 0.2, "enc.1": 0.7})
    assert len(exact_first["enc.1"]) == 3 and len(exact_first["enc.0"]) == 8


def test_global_takes_more_from_the_redundant_group_after_normalisation():
    flat = torch.ones(10)  # every unit equally important relative to its layer
    spread = torch.tensor([0.01] * 5 + [1.99] * 5)  # half the units nearly useless
    # scale "spread" up by 1000: without per-group normalisation it would never be pruned
    out = allocate({"flat": flat, "spread": spread * 1000}, 0.25, mode="global")
    assert len(out["flat"]) == 10
    assert out["spread"].tolist() == [5, 6, 7, 8, 9]
    total_kept = sum(len(v) for v in out.values())
    assert total_kept == 20 - 5


def test_global_respects_min_keep_round_to_and_overrides():
    s = {"a": torch.tensor([1e-3] * 8 + [1.0] * 8), "b": torch.ones(16), "c": torch.arange(1.0, 17.0)}
    out = allocate(s, 0.3, mode="global", round_to=8, per_group_ratio={"c": 0.5})
    assert len(out["c"]) == 8  # own ratio, allocated on its own
    assert len(out["a"]) == 8 and out["a"].tolist() == list(range(8, 16))
    assert len(out["b"]) == 16
    tiny = allocate({"a": torch.tensor([1e-6, 1e-6, 1.0]), "b": torch.ones(3)}, 0.6, mode="global", min_keep=2)
    assert len(tiny["a"]) == 2


def test_invalid_inputs():
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        allocate({"a": torch.ones(3)}, 1.0)
    with pytest.raises(ConfigError, match="per_group_ratio"):
        allocate({"a": torch.ones(3)}, 0.1, per_group_ratio={"a": -0.1})
    with pytest.raises(ConfigError, match="mode"):
        allocate({"a": torch.ones(3)}, 0.1, mode="layerwise")
    with pytest.raises(ValueError, match="NaN"):
        allocate({"a": torch.tensor([1.0, float("nan")])}, 0.1)
    with pytest.raises(ValueError, match="1-d"):
        allocate({"a": torch.ones(2, 2)}, 0.1)
