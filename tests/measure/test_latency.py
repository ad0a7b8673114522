"""Latency mechanics (never model speed): sampling, thread pinning, interleaving, ratio."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from slimkit.measure import CompareResult, LatencyResult, compare, latency
from slimkit.measure.latency import quantile, round_order


def _sleeper(ms: float):
    def fn(x: torch.Tensor) -> torch.Tensor:
        time.sleep(ms / 1e3)
        return x

    return fn


def test_latency_samples_and_statistics() -> None:
    calls: list[int] = []

    def fn(x: torch.Tensor) -> None:
        calls.append(1)
        time.sleep(0.001)

    res = latency(fn, torch.zeros(1), warmup=2, iters=7)
    assert isinstance(res, LatencyResult)
    assert len(calls) == 9 and len(res.samples_ms) == 7
    assert min(res.samples_ms) >= 1.0  # slept at least 1 ms each
    assert min(res.samples_ms) <= res.median_ms <= res.p90_ms <= max(res.samples_ms)
    assert res.mean_ms == pytest.approx(sum(res.samples_ms) / 7)
    assert res.to_dict()["warmup"] == 2


def test_latency_min_time_extends_the_run() -> None:
    res = latency(_sleeper(2), torch.zeros(1), warmup=0, iters=1, min_time_s=0.02)
    assert len(res.samples_ms) >= 2 and sum(res.samples_ms) >= 20.0


def test_threads_fixed_during_the_run_and_restored() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    latency(lambda x: seen.append(torch.get_num_threads()), torch.zeros(1), warmup=1, iters=2, threads=1)
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        latency(lambda x: x, torch.zeros(1), threads=0)


def test_modules_timed_in_eval_no_grad_and_flags_restored() -> None:
    modes: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            modes.append((self.training, torch.is_grad_enabled()))
            return x + y

    probe = Probe().train()
    latency(probe, (torch.zeros(1), torch.ones(1)), warmup=0, iters=3)
    assert modes == [(False, False)] * 3
    assert probe.training


def test_compare_interleaves_and_alternates_order() -> None:
    log: list[str] = []
    cmp = compare(lambda x: log.append("a"), lambda x: log.append("b"), torch.zeros(1),
                  rounds=4, iters_per_round=2, warmup=1, settle=0)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"]
    assert round_order(3) == [("a", "b"), ("b", "a"), ("a", "b")]
    assert len(cmp.samples_a_ms) == len(cmp.samples_b_ms) == 4
    assert all(len(s) == 2 for s in cmp.samples_a_ms)


def test_compare_settle_calls_open_every_block_untimed() -> None:
    log: list[str] = []
    cmp = compare(lambda x: log.append("a"), lambda x: log.append("b"), torch.zeros(1),
                  rounds=2, iters_per_round=2, warmup=0, settle=1)
    assert log == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3  # 1 untimed + 2 timed per block
    assert all(len(s) == 2 for s in cmp.samples_a_ms + cmp.samples_b_ms)
    with pytest.raises(ValueError, match="settle"):
        compare(lambda x: None, lambda x: None, torch.zeros(1), settle=-1)


def test_compare_speedup_of_4ms_vs_2ms() -> None:
    cmp = compare(_sleeper(4), _sleeper(2), torch.zeros(1), rounds=6, iters_per_round=3, warmup=1)
    assert isinstance(cmp, CompareResult)
    assert 1.5 <= cmp.speedup <= 2.6
    assert cmp.speedup == pytest.approx(cmp.median_a_ms / cmp.median_b_ms)
    assert cmp.ratio == cmp.speedup
    assert cmp.speedup_p25 <= cmp.speedup_p75
    assert min(cmp.round_ratios) <= cmp.speedup_p25 and cmp.speedup_p75 <= max(cmp.round_ratios)
    doc = cmp.to_dict()
    assert {"speedup", "speedup_p25", "speedup_p75", "median_a_ms", "median_b_ms"} <= set(doc)


def test_compare_passes_inputs_b_to_b_only_and_pins_threads() -> None:
    got: dict[str, list] = {"a": [], "b": []}
    before = torch.get_num_threads()
    compare(lambda x: got["a"].append((x, torch.get_num_threads())),
            lambda x: got["b"].append((x, torch.get_num_threads())),
            "torch-form", inputs_b=("numpy-form",), rounds=2, iters_per_round=1, warmup=0, threads=1)
    assert {x for x, _ in got["a"]} == {"torch-form"} and {x for x, _ in got["b"]} == {"numpy-form"}
    assert {n for _, n in got["a"] + got["b"]} == {1}
    assert torch.get_num_threads() == before


def test_quantile_matches_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    xs = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0.0, 0.25, 0.5, 0.9, 1.0):
        assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))
