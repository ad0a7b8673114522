"""Replace targeted ``nn.Linear`` layers by gated candidates, and replay that from a Record.

Shared by the kinds that swap a Linear for a cheaper layer one to one (``lowrank.block_diagonal``
and the tied layers of :mod:`slimkit.share.structured`): select the Linears, build each
candidate, gate it (:func:`.gate.decide`), swap the kept ones and record their structure;
replay checks each recorded layer against the dense model and rebuilds it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..core import Context, MethodError, Record, Targets
from ..core.modules import swap_module
from .gate import GateOptions, gate_and_swap, n_params, summarize

Builder = Callable[[nn.Linear, int], tuple[nn.Module, dict[str, Any]]]


def _linears(model: nn.Module, targets: Targets, kind: str) -> list[tuple[str, nn.Linear]]:
    found = [(n, m) for n, m in targets.select(model) if type(m) is nn.Linear]
    if not found:
        raise MethodError(f"{kind}: the targets select no nn.Linear layer (it rewrites Linear weights only)")
    return found


def replace_linears(model: nn.Module, config: GateOptions, targets: Targets, ctx: Context, build: Builder) -> Record:
    """Build, project, gate and swap every targeted Linear; the Record holds the kept layers' structure."""
    layers = _linears(model, targets, config.kind)
    before = n_params(model)
    structures: dict[str, dict[str, Any]] = {}

    def make(k: int, name: str, dense: nn.Module) -> nn.Module:
        candidate, structures[name] = build(dense, k)
        return candidate

    swapped, decisions = gate_and_swap(model, layers, make, ctx, config)
    kept = {name: {"in": dense.in_features, "out": dense.out_features, "bias": dense.bias is not None,
                   **structures[name]} for name, dense in layers if name in swapped}
    summary = {"params_before": before, "params_after": n_params(model), **summarize(decisions)}
    return Record(kind=config.kind, data={"layers": kept, "gate": [d.to_dict() for d in decisions]},
                  summary=summary)


def like(dense: nn.Linear) -> dict[str, Any]:
    """``dtype`` / ``device`` keyword arguments that make a new layer match ``dense``."""
    return {"dtype": dense.weight.dtype, "device": dense.weight.device}


def int_at(value: Any, where: str, low: int = 1) -> int:
    """``value`` from a Record when it is an int ``>= low``; anything else raises ``ValueError`` naming ``where``."""
    if type(value) is not int or value < low:
        raise ValueError(f"{where}: expected an int >= {low}, got {value!r}")
    return value


def replay_linears(model: nn.Module, record: Record, make: Callable[[dict[str, Any], int, int, bool, dict[str, Any]],
                                                            nn.Module]) -> None:
    """Swap every layer ``record.data["layers"]`` names for ``make(spec, in, out, bias, like)``.

    Each recorded layer must be a dense ``nn.Linear`` of the recorded shape in ``model``; any
    mismatch or malformed entry raises ``ValueError`` (``restore`` reports it as an ArtifactError).
    """
    layers = record.data.get("layers")
    if not isinstance(layers, dict):
        raise ValueError(f"{record.kind}: record data needs a 'layers' mapping")
    for name, spec in layers.items():
        where = f"{record.kind} layer {name!r}"
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: expected a mapping, got {spec!r}")
        dense = model.get_submodule(name)
        n_in, n_out = int_at(spec.get("in"), f"{where} in"), int_at(spec.get("out"), f"{where} out")
        if not isinstance(dense, nn.Linear) or (dense.in_features, dense.out_features) != (n_in, n_out):
            raise ValueError(f"{where}: the model has {type(dense).__name__} there, not a Linear {n_in} -> {n_out}")
        bias = spec.get("bias")
        if not isinstance(bias, bool):
            raise ValueError(f"{where}: 'bias' must be true or false")
        swap_module(model, name, make(spec, n_in, n_out, bias, like(dense)))


__all__ = ["int_at", "like", "replace_linears", "replay_linears"]
