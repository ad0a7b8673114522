"""slimkit.lowrank.gate: the none / params / latency gates, input capture, serving runtimes.

Timing assertions are one-sided by a wide margin: the slow side sleeps 20 ms per call,
thousands of times a small Linear's cost on any CPU, so no machine can flip them.
"""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, Context, MethodError
from slimkit.lowrank.gate import GateOptions, capture_inputs, decide, n_params, serving_callable, summarize

pytestmark = pytest.mark.usefixtures("one_thread_module")

FAST = {"gate_rounds": 3, "gate_iters": 2}


class Sleepy(nn.Module):
    """Wraps a module and sleeps ``seconds`` before every call: a deliberately slow layer."""

    def __init__(self, inner: nn.Module, seconds: float = 0.02) -> None:
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.inner(x)


def _thin(dense: nn.Linear, rank: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dense.in_features, rank, bias=False), nn.Linear(rank, dense.out_features))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def test_options_validate() -> None:
    assert GateOptions().gate == "none"
    for bad in ({"gate_min_ratio": 0.0}, {"gate_rounds": 0}, {"gate_iters": 0}, {"gate_threads": 0},
                {"gate": "speed"}, {"gate_runtime": "tensorrt"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            GateOptions(**bad)


def test_none_gate_keeps_the_replacement_without_timing() -> None:
    dense = nn.Linear(16, 16)
    d = decide("fc", dense, Sleepy(_thin(dense)), None, GateOptions(gate="none"))
    assert (d.kept, d.gate, d.ratio, d.dense_ms) == ("factorized", "none", None, None)
    assert (d.params_dense, d.params_factorized) == (272, 4 * 16 + 4 * 16 + 16)


def test_params_gate_compares_parameter_counts() -> None:
    dense = nn.Linear(64, 64)
    thin = _thin(dense, 8)
    ratio = n_params(dense) / n_params(thin)
    kept = decide("fc", dense, thin, None, GateOptions(gate="params", gate_min_ratio=ratio - 0.01))
    declined = decide("fc", dense, thin, None, GateOptions(gate="params", gate_min_ratio=ratio + 0.01))
    assert kept.kept == "factorized" and declined.kept == "dense"
    assert kept.ratio == pytest.approx(ratio) and declined.to_dict()["ratio"] == pytest.approx(ratio)
    assert summarize([kept, declined]) == {"layers_factorized": 1, "layers_declined": 1}


def test_n_params_counts_shared_tensors_once() -> None:
    lin = nn.Linear(4, 4)
    assert n_params(nn.Sequential(lin, lin)) == n_params(lin) == 20


def test_capture_inputs_from_example_or_first_calibration_batch() -> None:
    model = _mlp()
    x = torch.randn(5, 16)
    got = capture_inputs(model, ["0", "2"], Context(example_inputs=x), "lowrank.test")
    assert torch.equal(got["0"][0], x) and got["2"][0].shape == (5, 32)
    calib = [torch.randn(3, 16), torch.randn(7, 16)]
    got = capture_inputs(model, ["2"], Context(calib_data=calib), "lowrank.test")
    assert got["2"][0].shape == (3, 32)  # the first batch only
    assert model.training is False and not model._forward_pre_hooks  # hooks removed


def test_capture_inputs_skips_unreached_modules_and_needs_a_batch() -> None:
    model = nn.ModuleDict({"used": nn.Linear(4, 4), "unused": nn.Linear(4, 4)})
    model.forward = lambda x: model["used"](x)  # type: ignore[method-assign]
    got = capture_inputs(model, ["used", "unused"], Context(example_inputs=torch.randn(2, 4)), "lowrank.test")
    assert set(got) == {"used"}
    with pytest.raises(MethodError, match="lowrank.test with gate: latency needs Context.example_inputs"):
        capture_inputs(_mlp(), ["0"], Context(), "lowrank.test")


def test_latency_gate_declines_a_slow_replacement_and_keeps_a_fast_one() -> None:
    dense = nn.Linear(16, 16).eval()
    x = (torch.randn(4, 16),)
    opts = GateOptions(gate="latency", **FAST)
    slow = decide("fc", dense, Sleepy(_thin(dense)), x, opts)
    assert slow.kept == "dense" and slow.ratio is not None and slow.ratio < 0.5
    assert slow.factorized_ms is not None and slow.dense_ms is not None and slow.factorized_ms >= 15.0
    fast = decide("fc", Sleepy(dense), _thin(dense), x, opts)  # now the dense side is the slow one
    assert fast.kept == "factorized" and fast.ratio is not None and fast.ratio > 2.0
    assert fast.runtime == "eager"


def test_latency_gate_without_inputs_keeps_the_dense_layer() -> None:
    dense = nn.Linear(8, 8)
    d = decide("never_reached", dense, _thin(dense, 2), None, GateOptions(gate="latency"))
    assert d.kept == "dense" and d.ratio is None and d.runtime == "eager"


@pytest.mark.parametrize("runtime", ["pt2", "onnx"])
def test_latency_gate_times_the_serving_runtime(runtime: str, tmp_path) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(24, 24).eval()
    thin = _thin(dense, 4).eval()
    x = (torch.randn(3, 24),)
    fn, args = serving_callable(thin, x, runtime, tmp_path)  # type: ignore[arg-type]
    assert not isinstance(fn, nn.Sequential)  # a program / session, not the eager module
    out = fn(*args)
    out = torch.as_tensor(out[0] if isinstance(out, (list, tuple)) else out)
    assert torch.allclose(out, thin(*x), atol=1e-5)
    d = decide("fc", dense, thin, x, GateOptions(gate="latency", gate_runtime=runtime, **FAST))  # type: ignore[arg-type]
    assert d.runtime == runtime and d.kept in ("factorized", "dense")
    assert d.ratio is not None and d.ratio > 0 and d.dense_ms is not None and d.dense_ms > 0
    assert d.kept == ("factorized" if d.ratio >= 1.0 else "dense")


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if float(x.sum()) > 0 else x  # Python control flow on a value: not exportable


def test_a_layer_that_cannot_be_exported_is_a_method_error(tmp_path) -> None:
    with pytest.raises(MethodError, match="cannot time DataDependent on pt2"):
        serving_callable(DataDependent(), (torch.randn(2, 3),), "pt2", tmp_path)


def test_latency_gate_leaves_the_layers_training_flags_as_they_were() -> None:
    dense, thin = nn.Linear(8, 8).train(), _thin(nn.Linear(8, 8), 2).train()
    decide("fc", dense, thin, (torch.randn(2, 8),), GateOptions(gate="latency", gate_rounds=1, gate_iters=1))
    assert dense.training and thin.training
