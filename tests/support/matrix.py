"""One cell of the support matrix: apply one method to one tiny model and check the result.

``run_cell(model, method) -> (status, detail)``, status one of

- ``"ok"``: the method ran and its output passed the column's check (:data:`TOLERANCES`);
- ``"unsupported"``: the method raised a :class:`~slimkit.core.errors.SlimkitError`, whose
  message (``detail``) names what is not supported;
- ``"FAIL"``: anything else: a raw Python / torch exception, a tolerance miss, a model that
  did not really shrink, a save/restore round trip that is not exact.

How each column checks "works" (the numbers are :data:`TOLERANCES`):

- structured pruning (``prune.channel`` / ``prune.heads``): first zero every coupled slice of
  the units pruning will remove (as ``tests/prune/test_generality.py`` does), so removing
  them must not change the output; then the parameter count must drop (and the module named
  by ``Spec.must_shrink``, e.g. the LSTM itself, must shrink).
- ``prune.magnitude``: zero the smallest half of every prunable weight first; pruning half
  must then leave the output unchanged and reach the sparsity.
- ``prune.layers``: no exact reference exists (a dropped block changes the function), so the
  output keeps its shape and stays finite, and the block count and parameters drop.
- int8 (``quantize.*``, ``export.pt2e``): mean row cosine and relative L2 error of the first
  output tensor against the float model.
- ``export.onnx``: the ONNX Runtime output against PyTorch's.
- ``save/restore`` and every transforming cell: ``slimkit.save`` -> ``slimkit.restore`` gives
  a bit-identical output.
"""
from __future__ import annotations

import contextlib
import math
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import slimkit
from slimkit.core.context import Batch, call_model
from slimkit.core.context import first_tensor as context_first_tensor
from slimkit.core.errors import SlimkitError

from .models import MODELS, Spec

METHODS: tuple[str, ...] = ("prune.channel", "prune.heads", "prune.layers", "prune.magnitude", "quantize.dynamic",
                            "quantize.static", "export.onnx", "export.pt2e", "save/restore")
CHANNEL_RATIO = 0.4
SPARSITY = 0.5
# int8: mean row cosine >= cos, ||y - y_ref|| / ||y_ref|| <= rel (first output tensor, batch of 2)
INT8_TOL = {"cos": 0.98, "rel": 0.2}
# float paths: max |y - y_ref| <= atol * max(1, max |y_ref|)
FLOAT_ATOL = 1e-4
ONNX_ATOL = 1e-3
TOLERANCES: dict[str, str] = {
    "prune.channel": f"pruned units zeroed first (ratio {CHANNEL_RATIO}); max abs diff <= {FLOAT_ATOL:g}*max(1,|y|); "
                     "params drop; restore exact",
    "prune.heads": f"1 head per group zeroed first; max abs diff <= {FLOAT_ATOL:g}*max(1,|y|); params drop; "
                   "restore exact",
    "prune.layers": "drop block 0: same output shape, finite, fewer blocks and params; restore exact",
    "prune.magnitude": f"smallest {SPARSITY:.0%} zeroed first; sparsity reached; max abs diff <= "
                       f"{FLOAT_ATOL:g}*max(1,|y|); restore exact",
    "quantize.dynamic": f"cosine >= {INT8_TOL['cos']}, rel L2 err <= {INT8_TOL['rel']}; restore exact",
    "quantize.static": f"cosine >= {INT8_TOL['cos']}, rel L2 err <= {INT8_TOL['rel']} (3 calib batches); "
                       "restore exact",
    "export.onnx": f"ONNX Runtime vs PyTorch: max abs diff <= {ONNX_ATOL:g}*max(1,|y|)",
    "export.pt2e": f"saved .pt2 program (static int8, run uncompiled) vs float PyTorch: cosine >= {INT8_TOL['cos']}, "
                   f"rel L2 err <= {INT8_TOL['rel']}",
    "save/restore": "prune.magnitude record saved, restored into a fresh model: bit-identical output",
}
CELL_TIMEOUT_S = 300  # generous: a loaded 2-core machine runs torchao's conv-BN folding for ~100 s


class CellFailure(AssertionError):
    """A check of the cell failed (shown as FAIL with this message)."""


class CellTimeout(Exception):
    """The cell ran past its time limit."""


# -- helpers ---------------------------------------------------------------------------------
def first_tensor(out: Any) -> torch.Tensor:
    """The first tensor of a model output (:func:`slimkit.core.context.first_tensor`); none is a failure."""
    t = context_first_tensor(out)
    if t is None:
        raise CellFailure(f"the model output {type(out).__name__} holds no tensor")
    return t


def forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return first_tensor(call_model(model.eval(), batch)).detach().float()


def reference(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The float model's output; a (near) zero one would make every tolerance vacuous."""
    ref = forward(model, batch)
    if not torch.isfinite(ref).all() or float(ref.abs().max()) < 1e-3:
        raise CellFailure(f"the reference output is degenerate (max |y| = {float(ref.abs().max()):.2g}); "
                          "fix the model factory")
    return ref


def export_reference(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The output the exporters write by default: :func:`slimkit.export.view.export_view`'s view
    (logits, else last_hidden_state; an encoder-decoder's encoder), run in PyTorch."""
    from slimkit.export.view import export_view

    view, view_batch = export_view(model, batch)
    return reference(view, view_batch)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_close(got: torch.Tensor, ref: torch.Tensor, atol: float, what: str) -> float:
    if got.shape != ref.shape:
        raise CellFailure(f"{what}: output shape {tuple(got.shape)} != {tuple(ref.shape)}")
    if not torch.isfinite(got).all():
        raise CellFailure(f"{what}: output is not finite")
    diff = float((got - ref).abs().max()) if got.numel() else 0.0
    bound = atol * max(1.0, float(ref.abs().max()))
    if diff > bound:
        raise CellFailure(f"{what}: max abs diff {diff:.3g} > {bound:.3g}")
    return diff


def check_int8(got: torch.Tensor, ref: torch.Tensor, what: str) -> str:
    if got.shape != ref.shape:
        raise CellFailure(f"{what}: output shape {tuple(got.shape)} != {tuple(ref.shape)}")
    if not torch.isfinite(got).all():
        raise CellFailure(f"{what}: output is not finite")
    g, r = got.double().flatten(1), ref.double().flatten(1)
    cos = float(nn.functional.cosine_similarity(g, r).mean())
    rel = float((g - r).norm() / r.norm().clamp_min(1e-12))
    if cos < INT8_TOL["cos"] or rel > INT8_TOL["rel"]:
        raise CellFailure(f"{what}: cosine {cos:.4f}, rel err {rel:.3f} outside the int8 tolerance")
    return f"cos {cos:.4f}, rel {rel:.3f}"


def check_restore(model: nn.Module, spec: Spec, batch: Batch) -> None:
    """save -> restore into a fresh dense model must reproduce ``model``'s output bit for bit."""
    want = forward(model, batch)
    with tempfile.TemporaryDirectory() as tmp:
        slimkit.save(model, Path(tmp) / "m")
        again = slimkit.restore(Path(tmp) / "m", model=lambda: spec.factory()[0])
    got = forward(again, batch)
    if got.shape != want.shape or not torch.equal(got, want):
        raise CellFailure("save/restore: the restored model's output differs from the saved model's")


def must_shrink(before: nn.Module, after: nn.Module, spec: Spec, method: str) -> None:
    for name in spec.must_shrink.get(method, ()):
        b, a = n_params(before.get_submodule(name)), n_params(after.get_submodule(name))
        if a >= b:
            kind = type(before.get_submodule(name)).__name__
            raise CellFailure(f"{method} ran but did not shrink {name!r} ({kind}, {b} -> {a} params)")


def zero_units(model: nn.Module, batch: Batch, heads: bool) -> int:
    """Zero every coupled slice of the units pruning will remove (least important by l1 then).

    Channel groups lose ``keep_count``'s share at :data:`CHANNEL_RATIO`; head groups one head.
    Returns the number of groups touched.
    """
    from slimkit.prune.allocation import keep_count
    from slimkit.prune.graph import analyze

    graph = analyze(model, batch)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    gen = torch.Generator().manual_seed(1)
    n = 0
    for g in graph.groups:
        if g.heads != heads:
            continue
        n_drop = 1 if heads else g.n_units - keep_count(g.n_units, CHANNEL_RATIO)
        dropped = torch.randperm(g.n_units, generator=gen)[:n_drop].numpy()
        with torch.no_grad():
            for (param, dim), members in g.members.items():
                pos = np.flatnonzero(np.isin(members, dropped))
                state[param].index_fill_(dim, torch.as_tensor(pos, dtype=torch.long), 0.0)
        n += 1
    return n


def zero_smallest(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest ``ceil(sparsity * n)`` entries of every weight ``prune.magnitude`` selects."""
    from slimkit.prune.magnitude import prunable_params

    with torch.no_grad():
        for _, p in prunable_params(model, slimkit.Targets(), include_bias=False):
            k = math.ceil(sparsity * p.numel())
            idx = torch.topk(p.detach().abs().reshape(-1), k, largest=False).indices
            p.view(-1)[idx] = 0.0


def calib_batches(batch: Batch) -> list[Batch]:
    """The example batch and two more of the same shape (token ids redrawn, floats resampled)."""
    out = [batch]
    for seed in (11, 12):
        gen = torch.Generator().manual_seed(seed)

        def redraw(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if x.is_floating_point():
                return torch.randn(x.shape, generator=gen, dtype=x.dtype)
            return torch.randint(0, int(x.max()) + 1, x.shape, generator=gen, dtype=x.dtype)

        out.append({k: redraw(v) for k, v in batch.items()} if isinstance(batch, dict) else
                   type(batch)(redraw(v) for v in batch) if isinstance(batch, (tuple, list)) else redraw(batch))
    return out


# -- the cells -------------------------------------------------------------------------------
def _structured(spec: Spec, method: str) -> str:
    from slimkit.prune import ChannelPrune, HeadPrune

    model, batch = spec.factory()
    heads = method == "prune.heads"
    groups = zero_units(model, batch, heads=heads)
    ref = reference(model, batch)
    config = HeadPrune(heads_per_group=1) if heads else ChannelPrune(ratio=CHANNEL_RATIO)
    pruned = slimkit.apply(model, config, ctx=slimkit.Context(example_inputs=batch))
    diff = check_close(forward(pruned, batch), ref, FLOAT_ATOL, method)
    p0, p1 = n_params(model), n_params(pruned)
    if p1 >= p0:
        raise CellFailure(f"{method}: parameters did not drop ({p0} -> {p1})")
    must_shrink(model, pruned, spec, method)
    check_restore(pruned, spec, batch)
    return f"{groups} groups, params {p0} -> {p1}, max diff {diff:.1e}"


def _layers(spec: Spec, method: str) -> str:
    from slimkit.prune import LayerPrune

    model, batch = spec.factory()
    ref = reference(model, batch)
    pruned = slimkit.apply(model, LayerPrune(drop=(0,)), slimkit.Targets(include=spec.layer_targets),
                           slimkit.Context(example_inputs=batch))
    out = forward(pruned, batch)
    if out.shape != ref.shape or not torch.isfinite(out).all():
        raise CellFailure(f"{method}: output shape {tuple(out.shape)} (want {tuple(ref.shape)}) or not finite")
    rec = slimkit.records(pruned)[-1]
    if rec.summary["blocks_after"] >= rec.summary["blocks_before"] or n_params(pruned) >= n_params(model):
        raise CellFailure(f"{method}: no block was removed ({rec.summary})")
    check_restore(pruned, spec, batch)
    return f"blocks {rec.summary['blocks_before']} -> {rec.summary['blocks_after']} ({', '.join(rec.data['lists'])})"


def _magnitude(spec: Spec, method: str) -> str:
    from slimkit.prune import MagnitudePrune

    model, batch = spec.factory()
    zero_smallest(model, SPARSITY)
    ref = reference(model, batch)
    pruned = slimkit.apply(model, MagnitudePrune(sparsity=SPARSITY))
    diff = check_close(forward(pruned, batch), ref, FLOAT_ATOL, method)
    reached = slimkit.records(pruned)[-1].summary["sparsity"]
    if reached < SPARSITY - 1e-3:
        raise CellFailure(f"{method}: sparsity {reached:.3f} < {SPARSITY}")
    check_restore(pruned, spec, batch)
    return f"sparsity {reached:.3f}, max diff {diff:.1e}"


def _quantize(spec: Spec, method: str) -> str:
    from slimkit.quantize.ptq import DynamicQuant, StaticQuant

    model, batch = spec.factory()
    ref = reference(model, batch)
    config = DynamicQuant() if method == "quantize.dynamic" else StaticQuant()
    q = slimkit.apply(model, config, ctx=slimkit.Context(example_inputs=batch, calib_data=calib_batches(batch)))
    detail = check_int8(forward(q, batch), ref, method)
    check_restore(q, spec, batch)
    return f"{slimkit.records(q)[-1].summary['layers']} int8 layers, {detail}"


def _onnx(spec: Spec, method: str) -> str:
    from slimkit.export.onnx import OnnxExport, OrtModel

    model, batch = spec.factory()
    ref = export_reference(model, batch)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = slimkit.Context(example_inputs=batch, extras={"export_dir": tmp})
        slimkit.apply(model, OnnxExport(), ctx=ctx)
        got = forward(OrtModel(Path(tmp) / "model.onnx", threads=1), batch)
    diff = check_close(got, ref, ONNX_ATOL, method)
    return f"max diff {diff:.1e}"


def _pt2e(spec: Spec, method: str) -> str:
    from slimkit.export.pt2e import Pt2eExport, Pt2eModel

    model, batch = spec.factory()
    ref = export_reference(model, batch)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = slimkit.Context(example_inputs=batch, calib_data=calib_batches(batch), extras={"export_dir": tmp})
        slimkit.apply(model, Pt2eExport(check=False), ctx=ctx)
        got = forward(Pt2eModel(Path(tmp) / "model.pt2", compile=False), batch)
    return check_int8(got, ref, method)


def _save_restore(spec: Spec, method: str) -> str:
    from slimkit.prune import MagnitudePrune

    model, batch = spec.factory()
    check_restore(slimkit.apply(model, MagnitudePrune(sparsity=SPARSITY)), spec, batch)
    return "bit-identical"


_CELLS = {"prune.channel": _structured, "prune.heads": _structured, "prune.layers": _layers,
          "prune.magnitude": _magnitude, "quantize.dynamic": _quantize, "quantize.static": _quantize,
          "export.onnx": _onnx, "export.pt2e": _pt2e, "save/restore": _save_restore}


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`CellTimeout` after ``seconds`` (SIGALRM; only in the main thread, else no limit)."""
    def expire(*_: Any) -> None:
        raise CellTimeout(f"over {seconds} s")

    try:
        old = signal.signal(signal.SIGALRM, expire)
    except ValueError:  # not the main thread
        yield
        return
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cell(model_name: str, method: str, timeout_s: int = CELL_TIMEOUT_S) -> tuple[str, str]:
    """Run one cell; returns ``(status, detail)`` with status ``"ok"``, ``"unsupported"`` or ``"FAIL"``."""
    spec = MODELS[model_name]
    try:
        with time_limit(timeout_s), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return "ok", _CELLS[method](spec, method)
    except SlimkitError as exc:
        return "unsupported", f"{type(exc).__name__}: {exc}"
    except CellFailure as exc:
        return "FAIL", str(exc)
    except Exception as exc:  # noqa: BLE001  (a raw exception reaching the user is the bug this reports)
        return "FAIL", f"raw {type(exc).__name__}: {exc}"


__all__ = ["METHODS", "MODELS", "TOLERANCES", "run_cell"]
