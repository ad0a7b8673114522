"""Wall-clock latency, and paired A/B comparison that cancels machine drift.

A speed claim is a *ratio measured in one run*: :func:`compare` interleaves A and B in
rounds (A,B then B,A alternately), on the same inputs and thread count, so load from
other processes, thermal state and cache warmth hit both sides alike. Each round gives
a per-round median for A and for B; the reported medians are the medians of those, the
speedup is ``median_a / median_b`` (> 1 means B is faster), and its spread is the
25th-75th percentile of the per-round ratios.

Each block of timed calls starts with ``settle`` untimed calls (default 1). A runtime's
worker threads keep spinning for a while after a call (ONNX Runtime's intra-op pool,
OpenMP), so the first call of the *other* side after a switch pays for that, enough to change
the ratio (docs/measurements.md). The untimed call absorbs the switch, so each side
is timed in its own steady state.

Callables are called through :func:`slimkit.core.call_model`, so an ``nn.Module``, a
plain function or an ONNX Runtime wrapper work alike. Modules are timed in eval mode
(their training flags are restored afterwards) under ``torch.no_grad()``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..core.context import Batch, call_model

Runnable = Callable[..., Any]


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), ``0 <= q <= 1``."""
    if not xs:
        raise ValueError("quantile of an empty sequence")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclasses.dataclass
class LatencyResult:
    """Per-call wall-clock times of one callable, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    samples_ms: list[float]
    threads: int
    warmup: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CompareResult:
    """Paired comparison of A (baseline) and B; ``speedup = median_a_ms / median_b_ms``."""

    speedup: float
    speedup_p25: float
    speedup_p75: float
    median_a_ms: float
    median_b_ms: float
    round_ratios: list[float]
    samples_a_ms: list[list[float]]
    samples_b_ms: list[list[float]]
    rounds: int
    iters_per_round: int
    threads: int

    @property
    def ratio(self) -> float:
        """Alias of :attr:`speedup` (time A / time B)."""
        return self.speedup

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Set ``torch.set_num_threads(threads)`` for the block (None keeps the current count), then restore."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _timing_mode(*fns: Runnable) -> Iterator[None]:
    """no_grad, and eval mode for modules (training flags restored after)."""
    flags = [(m, m.training) for fn in fns if isinstance(fn, nn.Module) for m in fn.modules()]
    for fn in fns:
        if isinstance(fn, nn.Module):
            fn.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training


def _time_once(fn: Runnable, inputs: Batch) -> float:
    t0 = time.perf_counter_ns()
    call_model(fn, inputs)
    return (time.perf_counter_ns() - t0) / 1e6  # ms


def latency(fn: Runnable, inputs: Batch, *, warmup: int = 3, iters: int = 20, threads: int | None = None,
            min_time_s: float = 0.0) -> LatencyResult:
    """Time ``fn(inputs)`` call by call: ``warmup`` untimed calls, then at least ``iters`` timed ones,
    continuing until ``min_time_s`` seconds of timed calls have accumulated."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    with fixed_threads(threads) as n_threads, _timing_mode(fn):
        for _ in range(warmup):
            call_model(fn, inputs)
        samples: list[float] = []
        while len(samples) < iters or sum(samples) < min_time_s * 1e3:
            samples.append(_time_once(fn, inputs))
    return LatencyResult(
        median_ms=statistics.median(samples), p90_ms=quantile(samples, 0.9), mean_ms=statistics.fmean(samples),
        samples_ms=samples, threads=n_threads, warmup=warmup,
    )


def round_order(rounds: int) -> list[tuple[str, str]]:
    """Which side runs first in each round: A,B then B,A, alternating (cancels linear drift)."""
    return [("a", "b") if r % 2 == 0 else ("b", "a") for r in range(rounds)]


def compare(a: Runnable, b: Runnable, inputs: Batch, *, rounds: int = 10, iters_per_round: int = 5, warmup: int = 3,
            threads: int | None = None, inputs_b: Batch | None = None, settle: int = 1,
            pause_s: float = 0.0, on_round: Callable[[], None] | None = None) -> CompareResult:
    """Paired latency of baseline ``a`` against candidate ``b``; ``speedup > 1`` means B is faster.

    Both run with the same thread count and the same inputs (``inputs_b`` when B needs a
    different form of the same batch, e.g. numpy for ONNX Runtime). ``on_round`` is called
    after every round, outside the timed calls (progress of a long comparison). See the module docstring.
    """
    if rounds < 1 or iters_per_round < 1 or warmup < 0 or settle < 0:
        raise ValueError(f"need rounds >= 1, iters_per_round >= 1, warmup >= 0, settle >= 0; got {rounds}, "
                         f"{iters_per_round}, {warmup}, {settle}")
    side = {"a": (a, inputs), "b": (b, inputs if inputs_b is None else inputs_b)}
    samples: dict[str, list[list[float]]] = {"a": [], "b": []}
    with fixed_threads(threads) as n_threads, _timing_mode(a, b):
        for _ in range(warmup):
            for key in ("a", "b"):
                call_model(*side[key])
        for order in round_order(rounds):
            for key in order:
                fn, x = side[key]
                if pause_s:
                    time.sleep(pause_s)  # let the other side's worker threads go idle
                for _ in range(settle):  # untimed: absorbs the other side's spinning threads
                    call_model(fn, x)
                samples[key].append([_time_once(fn, x) for _ in range(iters_per_round)])
            if on_round is not None:
                on_round()
    med_a = [statistics.median(s) for s in samples["a"]]  # per-round medians
    med_b = [statistics.median(s) for s in samples["b"]]
    ratios = [ra / rb if rb > 0 else float("inf") for ra, rb in zip(med_a, med_b)]
    median_a, median_b = statistics.median(med_a), statistics.median(med_b)
    return CompareResult(
        speedup=median_a / median_b if median_b > 0 else float("inf"),
        speedup_p25=quantile(ratios, 0.25), speedup_p75=quantile(ratios, 0.75),
        median_a_ms=median_a, median_b_ms=median_b, round_ratios=ratios,
        samples_a_ms=samples["a"], samples_b_ms=samples["b"],
        rounds=rounds, iters_per_round=iters_per_round, threads=n_threads,
    )
