"""``profile(model, inputs)``: parameters, bytes on disk, MACs, memory traffic, peak activations.

Every size or compute figure slimkit reports comes from here, so the conventions are
fixed in one place:

- ``params_total`` / ``params_nonzero``: parameters (not buffers), shared/tied tensors
  counted once.
- ``bytes_on_disk``: the tensor bytes :func:`slimkit.save` writes into
  ``model.safetensors`` -- ``tensor_nbytes`` (dense or relative-index CSR, whichever is
  smaller) over ``state_dict()`` with tied tensors stored once, exactly as
  :func:`slimkit.core.encoding.encode_state` does. The file is this plus the
  safetensors header (8-byte length + JSON).
- ``macs``: multiply-accumulates of one forward on ``example_inputs`` (the whole batch),
  counted per ATen op (see :mod:`slimkit.measure.counter` for what counts);
  ``flops = 2 * macs``.
- ``mac_cost_bytes``: memory-access cost (ShuffleNetV2): bytes read (weights and
  activations) plus bytes written, summed over ops; views are free.
- ``peak_activation_bytes``: peak live activation memory, estimated from storage
  lifetimes in the dispatch stream (see :mod:`slimkit.measure.tracker`).
- ``uncounted_ops``: non-ATen ops (``quantized::*``, custom kernels) that ran without a
  MAC formula, so ``macs`` misses their work; register one with ``register_mac_formula``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..core.context import Batch, call_model
from ..core.encoding import INDEX_BITS, ROWPTR_BYTES, as_matrix, dense_nbytes, tensor_nbytes
from .tracker import OpTracker, iter_weights


@dataclasses.dataclass
class LayerProfile:
    """One row of the per-layer table: ops that ran while this module was innermost."""

    name: str
    type: str
    params: int
    macs: int
    access_bytes: int
    calls: int
    output_shape: list[int] | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Profile:
    """Size and compute account of a model on one batch; ``to_dict()`` is JSON-able."""

    params_total: int
    params_nonzero: int
    bytes_on_disk: int
    macs: int
    flops: int
    mac_cost_bytes: int
    peak_activation_bytes: int
    weight_read_bytes: int
    activation_read_bytes: int
    activation_write_bytes: int
    macs_by_op: dict[str, int]
    uncounted_ops: list[str]
    layers: list[LayerProfile]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["layers"] = [layer.to_dict() for layer in self.layers]
        return out

    def table(self, *, max_rows: int | None = None) -> str:
        """A Markdown summary followed by the per-layer table (rows in execution order)."""
        summary = [
            ("params", _count(self.params_total)),
            ("non-zero params", _count(self.params_nonzero)),
            ("bytes on disk", _bytes(self.bytes_on_disk)),
            ("MACs", _count(self.macs)),
            ("FLOPs (2 x MACs)", _count(self.flops)),
            ("memory-access cost", _bytes(self.mac_cost_bytes)),
            ("peak activations (est.)", _bytes(self.peak_activation_bytes)),
        ]
        rows = [(layer.name or "(root)", layer.type, _count(layer.params), _count(layer.macs),
                 _pct(layer.macs, self.macs), _bytes(layer.access_bytes),
                 "x".join(map(str, layer.output_shape)) if layer.output_shape is not None else "-")
                for layer in self.layers]
        if max_rows is not None and len(rows) > max_rows:
            rows = rows[:max_rows] + [(f"... {len(rows) - max_rows} more", "", "", "", "", "", "")]
        return (_markdown(summary, ("", "value")) + "\n\n"
                + _markdown(rows, ("layer", "type", "params", "MACs", "% MACs", "mem access", "output")))


def _count(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _pct(part: int, total: int) -> str:
    return f"{100.0 * part / total:.1f}" if total else "-"


def _markdown(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# ---------------------------------------------------------------- size account


def _signature(t: torch.Tensor) -> tuple[int, int, tuple[int, ...], torch.dtype]:
    """Identity of the memory a tensor views; equal signatures = one tied tensor (as ``encode_state``)."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def unique_parameters(model: nn.Module) -> list[torch.Tensor]:
    """Parameters with tied/shared ones (same memory, shape and dtype) kept once."""
    seen: set[tuple[int, int, tuple[int, ...], torch.dtype]] = set()
    out = []
    for p in model.parameters():
        sig = _signature(p)
        if p.numel() and sig in seen:
            continue
        seen.add(sig)
        out.append(p)
    return out


def state_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data ``slimkit.save`` writes for ``state`` (tied entries once, CSR where smaller)."""
    seen: set[tuple[int, int, tuple[int, ...], torch.dtype]] = set()
    total = 0
    for t in state.values():
        t = t.detach()
        sig = _signature(t)
        if t.numel() and sig in seen:
            continue
        if t.numel():
            seen.add(sig)
        total += _fast_tensor_nbytes(t)
    return total


def _fast_tensor_nbytes(t: torch.Tensor) -> int:
    """``tensor_nbytes(t)``, skipping the CSR encoding when even its lower bound loses to dense.

    CSR needs at least ``nnz * (value + 1 index byte) + (rows + 1) * 4`` bytes, so a tensor
    that is dense enough to exceed the dense size with that bound is stored dense; the exact
    (slower) CSR count is only needed for sparse tensors. Same result as ``tensor_nbytes``.
    """
    dense = dense_nbytes(t)
    if not t.is_floating_point() or t.numel() < 64:
        return dense
    rows = as_matrix(t).shape[0]
    nnz = int(torch.count_nonzero(t).item())
    if nnz * (t.element_size() + INDEX_BITS // 8) + (rows + 1) * ROWPTR_BYTES >= dense:
        return dense
    return tensor_nbytes(t)


# ---------------------------------------------------------------- profiling


def _run(model: nn.Module, example_inputs: Batch, tracker: OpTracker) -> None:
    """One forward under ``no_grad`` in eval mode; every module's training flag is restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), tracker.watch(model, example_inputs):
            call_model(model, example_inputs)
    finally:
        for m, training in flags:
            m.training = training


def _layers(tracker: OpTracker) -> list[LayerProfile]:
    """Leaf modules plus any module whose own forward ran ops, in order of first call."""
    rows = [s for s in tracker.modules.values() if s.leaf or s.macs or s.access_bytes]
    rows.sort(key=lambda s: (s.order < 0, s.order))
    return [LayerProfile(s.name, s.type, s.params, s.macs, s.access_bytes, s.calls, s.output_shape) for s in rows]


def profile(model: nn.Module, example_inputs: Batch) -> Profile:
    """Profile ``model`` on ``example_inputs`` (a tensor, a tuple of tensors or a dict of kwargs).

    Runs one forward under ``torch.no_grad()`` in eval mode and restores the training
    flags afterwards. FLOPs follow the convention FLOPs = 2 x MACs. See the module
    docstring for exactly what each figure counts.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile() needs an nn.Module, got {type(model).__name__}")
    params = unique_parameters(model)
    tracker = OpTracker(list(iter_weights(model)))
    _run(model, example_inputs, tracker)
    macs = tracker.macs
    access = tracker.weight_read_bytes + tracker.activation_read_bytes + tracker.activation_write_bytes
    return Profile(
        params_total=sum(p.numel() for p in params),
        params_nonzero=sum(int(torch.count_nonzero(p.detach()).item()) for p in params),
        bytes_on_disk=state_nbytes(model.state_dict()),
        macs=macs,
        flops=2 * macs,
        mac_cost_bytes=access,
        peak_activation_bytes=tracker.peak_live_bytes,
        weight_read_bytes=tracker.weight_read_bytes,
        activation_read_bytes=tracker.activation_read_bytes,
        activation_write_bytes=tracker.activation_write_bytes,
        macs_by_op=dict(sorted(tracker.macs_by_op.items(), key=lambda kv: -kv[1])),
        uncounted_ops=sorted(tracker.unknown_ops),
        layers=_layers(tracker),
    )


def count_macs(model: nn.Module, example_inputs: Batch) -> int:
    """MACs of one forward of ``model`` on ``example_inputs`` (no_grad, eval mode; see :func:`profile`)."""
    tracker = OpTracker(list(iter_weights(model)))
    _run(model, example_inputs, tracker)
    return tracker.macs
