"""The latency table and its sum-versus-measured check (structure only: no speed is asserted)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimkit.core import Context
from slimkit.plan.lut import build_lut, check
from slimkit.plan.sensitivity import apply_action
from slimkit.plan.space import SpaceConfig, build_space, compose


@pytest.mark.parametrize("runtime", ["eager", "pt2e", "onnx"])
def test_lut_entries_and_check_on_a_tiny_model(runtime: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    x = torch.randn(4, 16)
    ctx = Context(example_inputs=x, calib_data=[x])
    units = build_space(model, SpaceConfig(include=("0", "2"), channel_ratios=(0.5,), svd_ratios=(),
                                           quantize_dynamic=False))
    chosen = [(u, u.actions[0]) for u in units]
    variants = [(u.name, a.label, apply_action(model, a, ctx)) for u, a in chosen]
    lut = build_lut(model, variants, x, runtime, batch_size=4, rounds=2, iters=2, threads=1)
    assert lut.base_ms > 0 and len(lut.entries) == 2
    assert all(math.isfinite(e.delta_ms) and e.speedup > 0 for e in lut.entries)
    pairs = [(u.name, a.label) for u, a in chosen]
    assert lut.predict_ms(pairs) == lut.base_ms + sum(e.delta_ms for e in lut.entries)

    from slimkit.core import Recipe

    planned = Recipe.from_dict(compose([a for _, a in chosen])).run(model, ctx)
    out = check(lut, model, planned, pairs, x, rounds=2, iters=2, threads=1)
    assert set(out) >= {"predicted_ms", "measured_ms", "relative_error", "predicted_speedup", "measured_speedup"}
    assert math.isfinite(out["relative_error"]) and out["measured_ms"] > 0
    assert out["relative_error"] == (out["predicted_ms"] - out["measured_ms"]) / out["measured_ms"]
    assert lut.to_dict()["entries"][0]["unit"] == "0" and lut.runtime == runtime


def test_text_inputs_on_an_exported_runtime_are_refused_clearly() -> None:
    from slimkit.core import ConfigError

    model = nn.Linear(4, 4)
    with pytest.raises(ConfigError, match="runtime onnx"):
        build_lut(model, [("0", "a", model)], {"x": torch.zeros(1, 4)}, "onnx", batch_size=1, rounds=1, iters=1)


class _DataDependent(nn.Module):
    """Branches on a value: eager runs it, ``torch.export`` cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)


def test_a_variant_the_runtime_cannot_run_is_left_out_not_fatal() -> None:
    model = nn.Linear(4, 4)
    x = torch.ones(1, 4)
    lut = build_lut(model, [("a", "bad", _DataDependent()), ("b", "ok", nn.Linear(4, 4))], x, "pt2e",
                    batch_size=1, rounds=1, iters=1, threads=1)
    bad, ok = lut.entries
    assert bad.error and "pt2" in bad.error and math.isnan(bad.delta_ms)
    assert ok.error is None and math.isfinite(ok.delta_ms)
    with pytest.raises(KeyError):
        lut.delta("a", "bad")
