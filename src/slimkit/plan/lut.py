"""Latency lookup table: what each candidate action costs on the serving runtime, and how well it adds up.

Each entry is the change of whole-model latency one action makes alone, measured paired and
interleaved against the unchanged model (:func:`slimkit.measure.compare`) on the chosen
runtime (eager PyTorch, a ``torch.export`` program, or ONNX Runtime, through the same
:func:`slimkit.lowrank.gate.serving_callable` the latency gates use) at the given batch.
Timing the whole model rather than the unit in isolation charges an action for everything
it changes (pruning a conv's channels also thins the next layer's input) and keeps fusions
and memory effects in; the ratio is drift-free, and ``delta_ms = base_ms * (1 / speedup - 1)``
anchors every entry to one base time.

The planner's latency model is additive: ``predicted_ms = base_ms + sum(delta_ms of the
chosen actions)``. :func:`check` times the planned model once and reports the relative error
of that prediction. Timings run one after another in this process, never concurrently
(they would disturb each other); other heavy work on the machine disturbs them too.
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core import ConfigError, MethodError
from ..lowrank.gate import serving_callable
from ..measure import CompareResult, compare

PlanRuntime = Literal["eager", "pt2e", "onnx"]
_GATE_RUNTIME = {"eager": "eager", "pt2e": "pt2", "onnx": "onnx"}  # serving_callable's names


@dataclasses.dataclass
class LutEntry:
    unit: str
    action: str
    delta_ms: float  # change of whole-model latency (negative = faster)
    speedup: float  # base / changed, paired
    speedup_p25: float
    speedup_p75: float
    error: str | None = None  # why this changed model cannot run on the runtime (left out of the search)


@dataclasses.dataclass
class Lut:
    runtime: str
    batch_size: int
    base_ms: float
    threads: int
    entries: list[LutEntry]

    def entry(self, unit: str, action: str) -> LutEntry | None:
        return next((e for e in self.entries if e.unit == unit and e.action == action), None)

    def delta(self, unit: str, action: str) -> float:
        e = self.entry(unit, action)
        if e is None or e.error is not None:
            raise KeyError(f"no timed LUT entry for {unit} / {action}")
        return e.delta_ms

    def predict_ms(self, chosen: Iterable[tuple[str, str]]) -> float:
        """Additive prediction: the base time plus each chosen (unit, action)'s delta."""
        return self.base_ms + sum(self.delta(u, a) for u, a in chosen)

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "batch_size": self.batch_size, "base_ms": self.base_ms,
                "threads": self.threads, "entries": [dataclasses.asdict(e) for e in self.entries]}


def _as_args(inputs: Any, runtime: str) -> tuple[Any, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, tuple):
        return inputs
    if runtime == "eager":
        return (inputs,)
    raise ConfigError(f"runtime {runtime} with {type(inputs).__name__} inputs (e.g. a text model's dict) is not "
                      "planned yet; use --runtime eager", key="runtime")


class _Served(nn.Module):
    """A model on its runtime, called with the batch the way :func:`compare` calls it."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], unpack_dict: bool) -> None:
        super().__init__()
        self.__dict__["fn"] = fn  # not a submodule: an exported program refuses .eval()
        self.args, self.unpack_dict = args, unpack_dict

    def forward(self, *_ignored: Any, **_kw: Any) -> Any:
        if self.unpack_dict:
            return self.fn(**self.args[0])
        return self.fn(*self.args)


def served(model: nn.Module, inputs: Any, runtime: PlanRuntime, workdir: Path) -> _Served:
    """``model`` ready to time on ``runtime`` with ``inputs`` bound (the batch is passed again by
    :func:`compare` and ignored: each side keeps the form of the batch its runtime needs)."""
    if runtime not in _GATE_RUNTIME:
        raise ConfigError(f"unknown runtime {runtime!r}; expected eager, pt2e or onnx", key="runtime")
    args = _as_args(inputs, runtime)
    fn, fargs = serving_callable(model, args, _GATE_RUNTIME[runtime], workdir)  # type: ignore[arg-type]
    return _Served(fn, fargs, unpack_dict=runtime == "eager" and isinstance(inputs, dict))


def paired(base: nn.Module | _Served, changed: nn.Module, inputs: Any, runtime: PlanRuntime, *, rounds: int,
           iters: int, threads: int | None = None) -> CompareResult:
    """Paired latency of ``base`` (a model, or one already :func:`served`) against ``changed`` on
    ``runtime`` (speedup > 1: changed is faster)."""
    try:
        with tempfile.TemporaryDirectory(prefix="slimkit-plan-") as tmp:
            a = base if isinstance(base, _Served) else served(base, inputs, runtime, Path(tmp))
            b = served(changed, inputs, runtime, Path(tmp))
            return compare(a, b, inputs, rounds=rounds, iters_per_round=iters, warmup=2, threads=threads)
    except (ConfigError, MethodError):
        raise
    except Exception as exc:  # a runtime that cannot run a changed model is the user's to know, not a traceback
        raise MethodError(f"cannot time the model on {runtime}: {type(exc).__name__}: {exc}") from exc


def build_lut(base: nn.Module, variants: Iterable[tuple[str, str, nn.Module]], inputs: Any, runtime: PlanRuntime,
              *, batch_size: int, rounds: int = 5, iters: int = 5, threads: int | None = None,
              log: Callable[[str], None] = lambda _m: None) -> Lut:
    """Time every ``(unit, action, changed model)`` against ``base``, one after another.

    The dense model is put on the runtime once (an export per variant is enough). A changed
    model the runtime cannot run (e.g. an int8 PyTorch module has no ONNX export) gets an entry
    with its ``error`` and no time: the search leaves it out. A dense model the runtime cannot
    run is an error.
    """
    entries: list[LutEntry] = []
    base_samples: list[float] = []
    n_threads = torch.get_num_threads() if threads is None else threads
    with tempfile.TemporaryDirectory(prefix="slimkit-plan-") as tmp:
        try:
            dense = served(base, inputs, runtime, Path(tmp))
        except (ConfigError, MethodError):
            raise
        except Exception as exc:
            raise MethodError(f"cannot run the dense model on {runtime}: {type(exc).__name__}: {exc}") from exc
        for unit, action, model in variants:
            try:
                res = paired(dense, model, inputs, runtime, rounds=rounds, iters=iters, threads=threads)
            except MethodError as exc:
                nan = float("nan")
                entries.append(LutEntry(unit, action, nan, nan, nan, nan, error=str(exc).splitlines()[0][:300]))
                log(f"latency {unit} / {action}: cannot run on {runtime}")
                continue
            base_samples.append(res.median_a_ms)
            entries.append(LutEntry(unit, action, 0.0, res.speedup, res.speedup_p25, res.speedup_p75))
            log(f"latency {unit} / {action}: {res.speedup:.2f}x")
        if not base_samples:
            base_samples.append(compare(dense, dense, inputs, rounds=rounds, iters_per_round=iters, warmup=2,
                                        threads=threads).median_a_ms)
    base_ms = sorted(base_samples)[len(base_samples) // 2]  # median over every pairing's base side
    for e in entries:
        if e.error is None:
            e.delta_ms = base_ms * (1.0 / e.speedup - 1.0)
    return Lut(runtime, batch_size, base_ms, n_threads, entries)


def check(lut: Lut, base: nn.Module, planned: nn.Module, chosen: Iterable[tuple[str, str]], inputs: Any, *,
          rounds: int = 5, iters: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Predicted (LUT sum) versus measured whole-model latency of ``planned``.

    The measured time is the paired speed-up anchored to the LUT's base time
    (``base_ms / speedup``), so machine drift between building the LUT and now cancels.
    ``relative_error = (predicted - measured) / measured``.
    """
    chosen = list(chosen)
    predicted_ms = lut.predict_ms(chosen)
    res = paired(base, planned, inputs, lut.runtime, rounds=rounds, iters=iters, threads=threads)  # type: ignore[arg-type]
    measured_ms = lut.base_ms / res.speedup
    return {"runtime": lut.runtime, "batch_size": lut.batch_size, "base_ms": lut.base_ms,
            "predicted_ms": predicted_ms, "measured_ms": measured_ms,
            "predicted_speedup": lut.base_ms / predicted_ms if predicted_ms > 0 else float("inf"),
            "measured_speedup": res.speedup, "measured_speedup_p25": res.speedup_p25,
            "measured_speedup_p75": res.speedup_p75,
            "relative_error": (predicted_ms - measured_ms) / measured_ms, "actions": len(chosen)}


__all__ = ["Lut", "LutEntry", "PlanRuntime", "build_lut", "check", "paired", "served"]
