"""Measured-speedup gating: keep a factorized layer only where it is really faster (or smaller).

A factorization that halves a layer's parameters can still be slower: two thin matrix
products read the activations twice, an FFT has a large constant, a depthwise CP chain is
memory bound. Counting MACs does not see that; timing does. Every kind of
:mod:`slimkit.lowrank` and the structured layers of :mod:`slimkit.share` inherit
:class:`GateOptions`, and for each targeted layer they build the replacement, then call
:func:`decide`:

- ``gate: none`` keeps every replacement (no timing).
- ``gate: latency`` times the dense layer against its replacement, paired and interleaved
  (:func:`slimkit.measure.latency.compare`), on the runtime the artifact will be served on
  (``gate_runtime``: eager PyTorch, a ``torch.export`` program, or ONNX Runtime), with the
  layer's real input shape (batch and sequence length of ``Context.example_inputs`` or the
  first calibration batch, captured by :func:`capture_inputs`). The replacement is kept
  when ``dense_ms / new_ms >= gate_min_ratio``.
- ``gate: params`` keeps the replacement when ``dense_params / new_params >=
  gate_min_ratio``: the goal is size, not speed.

Every decision, with its measured ratio, goes into the method's Record (``data["gate"]``),
so a report says which layers were declined and why. Timing one layer in isolation is a
proxy for its share of the model's time (caches, fusions across layers differ); the
benchmarks time the whole model on its runtime as well.
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, method_config
from ..core.context import forward_batches
from ..core.modules import swap_module

Gate = Literal["none", "latency", "params"]
Runtime = Literal["eager", "pt2", "onnx"]


@method_config
class GateOptions(MethodConfig):
    """The gating options every factorizing kind shares (a config without a kind, inherited).

    ``gate_rounds`` paired rounds of ``gate_iters`` calls each (medians); ``gate_threads``
    None uses the current torch thread count, for both sides.
    """

    gate: Gate = "none"
    gate_runtime: Runtime = "eager"
    gate_min_ratio: float = 1.0
    gate_rounds: int = 7
    gate_iters: int = 5
    gate_threads: int | None = None

    def validate(self) -> None:
        self._require(self.gate_min_ratio > 0, "gate_min_ratio", "a positive float", self.gate_min_ratio)
        self._require(self.gate_rounds >= 1, "gate_rounds", "an int >= 1", self.gate_rounds)
        self._require(self.gate_iters >= 1, "gate_iters", "an int >= 1", self.gate_iters)
        self._require(self.gate_threads is None or self.gate_threads >= 1, "gate_threads", "an int >= 1 or null",
                      self.gate_threads)


@dataclasses.dataclass
class GateDecision:
    """One layer's verdict. ``ratio`` is ``dense / replacement`` (time for ``latency``, parameters
    for ``params``; None for ``gate: none``); ``> 1`` favours the replacement."""

    layer: str
    kept: Literal["factorized", "dense"]
    gate: str
    ratio: float | None
    params_dense: int
    params_factorized: int
    runtime: str | None = None
    dense_ms: float | None = None
    factorized_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def n_params(module: nn.Module) -> int:
    """Parameters of ``module``, each shared tensor counted once."""
    seen: dict[int, int] = {}
    for p in module.parameters():
        seen[id(p)] = p.numel()
    return sum(seen.values())


def capture_inputs(model: nn.Module, names: Sequence[str], ctx: Context, method: str) -> dict[str, tuple[Any, ...]]:
    """The positional inputs each module in ``names`` receives on one batch.

    The batch is ``ctx.example_inputs`` or else the first batch of ``ctx.calib_data`` (the
    batch size and sequence length the artifact will serve). A module the batch never
    reaches is absent from the result; a gate without a batch is a :class:`MethodError`.
    """
    batch = ctx.example_inputs
    if batch is None and ctx.calib_data is not None:
        batch = next(iter(ctx.calib_data), None)
    if batch is None:
        raise MethodError(f"{method} with gate: latency needs Context.example_inputs or Context.calib_data "
                          "(one batch of the size the model will serve) to time each layer")
    seen: dict[str, tuple[Any, ...]] = {}
    hooks = []
    for name in names:
        module = model.get_submodule(name)

        def hook(_m: nn.Module, args: tuple[Any, ...], *, _name: str = name) -> None:
            if _name not in seen:
                seen[_name] = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)

        hooks.append(module.register_forward_pre_hook(hook))
    forward_batches(model, [batch], hooks)
    return seen


def serving_callable(module: nn.Module, inputs: tuple[Any, ...], runtime: Runtime,
                     workdir: Path) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """``(fn, args)`` that runs ``module`` on ``runtime`` the way a served artifact would.

    ``pt2`` is the ``torch.export`` program's module; ``onnx`` an ONNX Runtime session on a
    file written to ``workdir`` (the export family is imported lazily: only a gate on that
    runtime needs it). An export failure is a :class:`MethodError` naming the layer type.
    """
    module = module.eval()
    if runtime == "eager":
        return module, inputs
    try:
        if runtime == "pt2":
            with torch.no_grad():
                return torch.export.export(module, inputs, strict=False).module(), inputs
        from ..export.onnx import OrtModel, export_onnx

        path = export_onnx(module, inputs, workdir / f"layer{len(list(workdir.iterdir()))}.onnx",
                           dynamic_batch=False)
        ort = OrtModel(path, threads=torch.get_num_threads())
        return ort, tuple(inputs)
    except MethodError:
        raise
    except Exception as exc:  # exporters raise many types for unsupported ops
        raise MethodError(f"cannot time {type(module).__name__} on {runtime}: {exc}") from exc


def decide(layer: str, dense: nn.Module, candidate: nn.Module, inputs: tuple[Any, ...] | None,
           options: GateOptions) -> GateDecision:
    """Gate one replacement: keep ``candidate`` or the ``dense`` layer it would replace.

    ``inputs`` are the layer's captured positional inputs (:func:`capture_inputs`); a
    ``latency`` gate on a layer the batch never reached keeps the dense layer (its speed is
    unknown, so the change is not made).
    """
    pd, pf = n_params(dense), n_params(candidate)
    if options.gate == "none":
        return GateDecision(layer, "factorized", "none", None, pd, pf)
    if options.gate == "params":
        ratio = pd / max(pf, 1)
        kept = "factorized" if ratio >= options.gate_min_ratio else "dense"
        return GateDecision(layer, kept, "params", ratio, pd, pf)
    if inputs is None:
        return GateDecision(layer, "dense", "latency", None, pd, pf, runtime=options.gate_runtime)
    from ..measure.latency import compare

    modes = (dense.training, candidate.training)  # timing runs in eval mode; the model's mode is kept
    try:
        with tempfile.TemporaryDirectory(prefix="slimkit-gate-") as tmp:
            fa, xa = serving_callable(dense, inputs, options.gate_runtime, Path(tmp))
            fb, xb = serving_callable(candidate, inputs, options.gate_runtime, Path(tmp))
            res = compare(_Call(fa), _Call(fb), xa, inputs_b=xb, rounds=options.gate_rounds,
                          iters_per_round=options.gate_iters, warmup=2, threads=options.gate_threads)
    finally:
        dense.train(modes[0])
        candidate.train(modes[1])
    kept = "factorized" if res.speedup >= options.gate_min_ratio else "dense"
    return GateDecision(layer, kept, "latency", res.speedup, pd, pf, runtime=options.gate_runtime,
                        dense_ms=res.median_a_ms, factorized_ms=res.median_b_ms)


class _Call(nn.Module):
    """Wraps any callable so :func:`compare` can call it with a tuple of positional args."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.__dict__["fn"] = fn  # not a submodule: an exported program refuses .eval()

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def gate_and_swap(model: nn.Module, found: Sequence[tuple[str, nn.Module]],
                  build: Callable[[int, str, nn.Module], nn.Module], ctx: Context,
                  config: GateOptions) -> tuple[dict[str, nn.Module], list[GateDecision]]:
    """The one gated replacement loop: build each target's replacement, gate it, swap the kept ones.

    ``found`` lists ``(name, dense)`` targets; ``build(k, name, dense)`` returns the replacement
    (put in the dense layer's train/eval mode). Inputs are captured only for ``gate: latency``.
    Returns the kept replacements by name and every decision, in target order.
    """
    inputs = capture_inputs(model, [n for n, _ in found], ctx, config.kind) if config.gate == "latency" else {}
    kept: dict[str, nn.Module] = {}
    decisions = []
    for k, (name, dense) in enumerate(found):
        candidate = build(k, name, dense).train(dense.training)
        decision = decide(name, dense, candidate, inputs.get(name), config)
        decisions.append(decision)
        if decision.kept == "factorized":
            swap_module(model, name, candidate)
            kept[name] = candidate
    return kept, decisions


def summarize(decisions: Sequence[GateDecision]) -> dict[str, Any]:
    """Headline numbers for a Record's summary: layers replaced / declined by the gate."""
    kept = [d for d in decisions if d.kept == "factorized"]
    return {"layers_factorized": len(kept), "layers_declined": len(decisions) - len(kept)}


__all__ = ["GateOptions", "GateDecision", "capture_inputs", "decide", "gate_and_swap", "n_params", "serving_callable", "summarize"]
