"""Sensitivity: one evaluation per action, skipped entirely on a cache hit; refused actions recorded."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from slimkit.core import Context
from slimkit.plan.sensitivity import SensitivityCache, measure_sensitivity, points, weights_hash
from slimkit.plan.space import SpaceConfig, build_space


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _run(model: nn.Module, folder: Path, calls: list[int]) -> object:
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    ref = model(x).detach()

    def evaluate(m: nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return float(100.0 * nn.functional.cosine_similarity(m(x), ref, dim=-1).mean())

    units = build_space(model, SpaceConfig(quantize_dynamic=False))
    ctx = Context(example_inputs=x[:1], calib_data=[x])
    cache = SensitivityCache(folder, weights_hash(model))
    return measure_sensitivity(model, units, ctx, evaluate=evaluate, size_of=lambda m: sum(
        p.numel() * 4 for p in m.parameters()), data_key="test|dev", cache=cache)


def test_second_run_reads_the_cache(tmp_path: Path) -> None:
    calls: list[int] = []
    first = _run(_mlp(), tmp_path, calls)
    n = len(calls)
    assert n > 1 and first.evaluations == n  # the base is one of them
    rows = {(r.unit, r.action): r for r in first.rows}
    assert not rows[("4", "channels 25%")].feasible  # the output layer's classes are refused, with the reason
    assert "prune.channel" in (rows[("4", "channels 25%")].error or "")
    assert rows[("0", "channels 50%")].drop is not None and rows[("0", "channels 50%")].drop > 0
    assert rows[("0", "channels 50%")].size_bytes < first.base_size_bytes

    again: list[int] = []
    second = _run(_mlp(), tmp_path, again)
    assert again == [] and second.evaluations == 0
    assert [(r.unit, r.action, r.drop, r.error) for r in second.rows] == \
           [(r.unit, r.action, r.drop, r.error) for r in first.rows]
    assert all(r.cached for r in second.rows)

    other: list[int] = []
    _run(_mlp(seed=1), tmp_path, other)  # other weights: another key, evaluated afresh
    assert len(other) == n


def test_points_scale() -> None:
    assert points({"accuracy": 0.98}, "accuracy") == 98.0
    assert points({"spearman": 0.81, "spearman_x100": 81.0}, "spearman") == 81.0
    assert points({"loss": 2.5}, "loss") == 2.5
