"""``quantize.mixed``: per-layer bit-widths under a size budget (HAWQ-style), float where it matters.

Layers differ a lot in how much their quantisation noise hurts. HAWQ (Dong et al. 2019,
2020; Yao et al. 2021) scores a choice of bit-widths ``b_l`` by
``sum_l sensitivity_l * ||Q_{b_l}(W_l) - W_l||^2`` and picks the cheapest-in-damage
assignment whose size fits the budget. Here:

* the sensitivity is the average Hessian trace ``tr(H_l) / n_l`` (Hutchinson, on
  ``ctx.train_data`` with ``ctx.loss_fn``) or the *measured* output damage of quantising
  layer ``l`` alone at ``probe_bits``, divided by its weight error at those bits (so both
  are "damage per unit of squared weight error"; see :mod:`.sensitivity`);
* ``||Q_b(W) - W||^2`` is measured for every layer and choice (RTN, the stored format);
* sizes are the exact bytes of the stored format (codes + scales + zero points), and
  ``32`` means "keep float" (4 bytes per weight);
* the assignment is a multiple-choice knapsack solved by dynamic programming over the
  budget in units: exactly when the budget is at most 65536 units of the gcd of all
  costs, else in ``resolution`` units with every cost rounded *up*, so the result always
  fits (and may leave up to ``n_layers`` units unused).

Formats: 8-bit layers are symmetric per output channel (the int8 kernel's format);
narrower ones use ``group_size`` (per channel where it does not divide the row) and
``symmetric``. Conv2d kernels are stored per output channel and dequantised on the fly.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from ..core.modules import swap_module
from ..core.registry import register_replay
from ..core.targets import check_patterns, first_match
from .packing import packed_nbytes
from .rtn import dequantize_weight, rtn_quantize
from .sensitivity import layer_traces, measured_error_probe
from .weight_only import layer_entry, quantize_module, replay_layers, select_layers, size_summary
from .wo_modules import PackedWeight, weight_matrix

FLOAT_BITS = 32
EXACT_STATES = 1 << 16  # budgets of at most this many gcd-of-costs units are solved exactly


def allocate_bits(sensitivity: Mapping[str, float], sizes: Mapping[str, int], budget_bytes: float,
                  choices: Sequence[int] = (2, 3, 4, 8, 32), *,
                  errors: Mapping[str, Mapping[int, float]] | None = None,
                  cost: Callable[[str, int], int] | None = None, resolution: int = 4096) -> dict[str, int]:
    """Bit-width per layer minimising ``sum sensitivity_l * errors[l][b_l]`` with total ``cost`` <= budget.

    ``sizes`` are element counts. Without ``errors`` the quantisation noise proxy is
    ``numel * 4**-b`` (uniform rounding noise scales with the squared step ``2**-2b``),
    0 at 32 bits. Without ``cost`` a layer costs ``ceil(numel * b / 8)`` bytes (4 per
    weight at 32). Raises :class:`MethodError` when even the narrowest choices do not fit.
    """
    names = list(sensitivity)
    if set(names) != set(sizes):
        raise MethodError("sensitivity and sizes must name the same layers")
    choices = sorted({int(c) for c in choices})
    if not choices:
        raise MethodError("allocate_bits needs at least one bit-width choice")
    if not names:
        return {}

    def _cost(n: str, b: int) -> int:
        if cost is not None:
            return int(cost(n, b))
        return sizes[n] * 4 if b >= FLOAT_BITS else packed_nbytes(sizes[n], b)

    def _err(n: str, b: int) -> float:
        if errors is not None:
            return float(errors[n][b])
        return 0.0 if b >= FLOAT_BITS else sizes[n] * 4.0 ** (-b)

    costs = np.array([[_cost(n, b) for b in choices] for n in names], dtype=np.float64)  # [L, C]
    damage = np.array([[max(0.0, sensitivity[n]) * _err(n, b) for b in choices] for n in names])  # [L, C]
    cheapest = costs.min(axis=1)
    if cheapest.sum() > budget_bytes:
        raise MethodError(f"size budget {int(budget_bytes)} bytes is below the smallest possible size "
                          f"{int(cheapest.sum())} bytes (every layer at its narrowest choice)")
    g = math.gcd(*(int(c) for c in costs.reshape(-1)))
    if g > 0 and budget_bytes / g <= max(resolution, EXACT_STATES):
        unit = float(g)  # every cost is a whole number of units: the DP is exact
        r_max = int(budget_bytes // g)
    else:
        unit = max(budget_bytes / resolution, 1e-12)
        r_max = resolution
    units = np.ceil(costs / unit - 1e-9).astype(np.int64)  # [L, C] rounded up: the result always fits
    best = np.full(r_max + 1, np.inf)
    best[0] = 0.0
    picks = np.zeros((len(names), r_max + 1), dtype=np.int64)
    for li in range(len(names)):
        new = np.full(r_max + 1, np.inf)
        for ci in range(len(choices)):
            u = units[li, ci]
            if u > r_max:
                continue
            cand = np.full(r_max + 1, np.inf)
            cand[u:] = best[: r_max + 1 - u] + damage[li, ci]
            better = cand < new
            new[better] = cand[better]
            picks[li, better] = ci
        best = new
    if not np.isfinite(best).any():  # feasible, but not after rounding costs up: narrowest everywhere
        return {n: choices[int(np.argmin(costs[i]))] for i, n in enumerate(names)}
    r = int(np.argmin(best))  # least damage; argmin's first hit is also the smallest size among ties
    out: dict[str, int] = {}
    for li in range(len(names) - 1, -1, -1):
        ci = int(picks[li, r])
        out[names[li]] = choices[ci]
        r -= int(units[li, ci])
    return {n: out[n] for n in names}


def layer_format(cols: int, bits: int, group_size: int | None, symmetric: bool) -> tuple[int | None, bool]:
    """``(group_size, symmetric)`` actually used at ``bits`` for a row length ``cols``."""
    if bits == 8:
        return None, True
    if group_size is not None and cols % group_size:
        return None, symmetric
    return group_size, symmetric


def format_nbytes(rows: int, cols: int, bits: int, group_size: int | None, symmetric: bool) -> int:
    """Stored bytes of a ``[rows, cols]`` weight in :mod:`.wo_modules`' format (float: 4 per weight)."""
    if bits >= FLOAT_BITS:
        return rows * cols * 4
    gs, sym = layer_format(cols, bits, group_size, symmetric)
    groups = rows * (1 if gs is None else cols // gs)
    codes = rows * cols if bits == 8 else packed_nbytes(rows * cols, bits)
    return codes + groups * 4 + (0 if sym else groups)


@method_config
class MixedQuant(MethodConfig):
    """HAWQ-style mixed precision: per-layer bits (or float) from a sensitivity under a size budget."""

    kind = "quantize.mixed"
    stage = "quantize"

    # Budget as a fraction of the targeted weights' fp32 bytes; budget_bytes, when set, replaces it.
    budget_ratio: float | None = 0.25
    budget_bytes: int | None = None
    choices: tuple[int, ...] = (2, 3, 4, 8, 32)
    sensitivity: Literal["hessian", "probe"] = "probe"
    keep_float: tuple[str, ...] = ()  # layer-name patterns (fnmatch or "re:") never quantised
    group_size: int | None = None  # for layers below 8 bits
    symmetric: bool = False  # for layers below 8 bits (8-bit layers are symmetric per channel)
    n_batches: int = 4  # batches of train_data (hessian) or calib_data (probe)
    hutchinson_samples: int = 8
    probe_bits: int = 4
    probe_metric: Literal["mse", "kl"] = "mse"
    resolution: int = 4096

    def validate(self) -> None:
        self._require(self.budget_bytes is not None or self.budget_ratio is not None, "budget_ratio",
                      "a budget (budget_ratio or budget_bytes)", None)
        self._require(self.budget_ratio is None or 0.0 < self.budget_ratio <= 1.0, "budget_ratio",
                      "a float in (0, 1] or null", self.budget_ratio)
        self._require(self.budget_bytes is None or self.budget_bytes > 0, "budget_bytes", "a positive int or null",
                      self.budget_bytes)
        self._require(len(self.choices) > 0 and all(2 <= c <= 8 or c == FLOAT_BITS for c in self.choices),
                      "choices", "a non-empty list of ints in [2, 8] or 32", self.choices)
        check_patterns(self.keep_float, "keep_float")
        self._require(self.group_size is None or self.group_size >= 1, "group_size", "a positive int or null",
                      self.group_size)
        self._require(self.n_batches >= 1, "n_batches", "a positive int", self.n_batches)
        self._require(self.hutchinson_samples >= 1, "hutchinson_samples", "a positive int", self.hutchinson_samples)
        self._require(2 <= self.probe_bits <= 8, "probe_bits", "an int in [2, 8]", self.probe_bits)
        self._require(self.resolution >= 16, "resolution", "an int >= 16", self.resolution)


def weight_errors(w: torch.Tensor, bits_list: Sequence[int], group_size: int | None,
                  symmetric: bool) -> dict[int, float]:
    """``||Q_b(w) - w||^2`` (RTN in the stored format) for each ``b``; 0 for float."""
    out: dict[int, float] = {}
    for b in bits_list:
        if b >= FLOAT_BITS:
            out[b] = 0.0
            continue
        gs, sym = layer_format(w.shape[1], b, group_size, symmetric)
        out[b] = float(((dequantize_weight(*rtn_quantize(w, b, gs, sym)) - w) ** 2).sum())
    return out


def _sensitivities(model: nn.Module, names: list[str], config: MixedQuant, ctx: Context,
                   errs: dict[str, dict[int, float]]) -> dict[str, float]:
    if config.sensitivity == "hessian":
        data = ctx.need("train_data", f"{config.kind} with sensitivity='hessian'")
        loss_fn = ctx.need("loss_fn", f"{config.kind} with sensitivity='hessian'")
        batches = _first(data, config.n_batches)
        traces = layer_traces(model, names, loss_fn, batches, config.hutchinson_samples, ctx.seed)
        return {n: max(0.0, traces[n]) / model.get_submodule(n).weight.numel() for n in names}
    batches = _first(ctx.need("calib_data", f"{config.kind} with sensitivity='probe'"), config.n_batches)
    pb = config.probe_bits

    def qfn(w: torch.Tensor) -> torch.Tensor:
        m = w.detach().float().reshape(w.shape[0], -1)  # [N, K]
        gs, sym = layer_format(m.shape[1], pb, config.group_size, config.symmetric)
        return dequantize_weight(*rtn_quantize(m, pb, gs, sym)).reshape(w.shape)

    damage = measured_error_probe(model, names, qfn, batches, config.probe_metric)
    return {n: damage[n] / max(errs[n][pb], 1e-30) for n in names}


def _first(data: Any, n: int) -> list[Any]:
    out = []
    for batch in data:
        out.append(batch)
        if len(out) >= n:
            break
    if not out:
        raise MethodError("the sensitivity data (Context.train_data / calib_data) is empty")
    return out


@register_method(MixedQuant)
def mixed_precision(model: nn.Module, config: MixedQuant, targets: Targets, ctx: Context) -> Record:
    layers = select_layers(model, targets, conv=True)
    if not layers:
        raise MethodError(f"{config.kind}: the targets select no Linear or Conv2d layer ({targets.to_dict()})")
    shapes = {n: tuple(weight_matrix(m).shape) for n, m in layers.items()}
    fp32 = sum(r * c * 4 for r, c in shapes.values())
    budget = float(config.budget_bytes if config.budget_bytes is not None else config.budget_ratio * fp32)
    forced = [n for n in layers if first_match(config.keep_float, n) is not None]
    free = [n for n in layers if n not in forced]
    budget_free = budget - sum(shapes[n][0] * shapes[n][1] * 4 for n in forced)
    choices = sorted(set(config.choices) | ({config.probe_bits} if config.sensitivity == "probe" else set()))
    errs = {n: weight_errors(weight_matrix(layers[n]), choices, config.group_size, config.symmetric) for n in free}
    sens = _sensitivities(model, free, config, ctx, errs) if free else {}
    bits = allocate_bits(sens, {n: shapes[n][0] * shapes[n][1] for n in free}, budget_free, config.choices,
                         errors=errs, resolution=config.resolution,
                         cost=lambda n, b: format_nbytes(*shapes[n], b, config.group_size, config.symmetric))
    bits.update({n: FLOAT_BITS for n in forced})
    entries: dict[str, Any] = {}
    packed: dict[str, PackedWeight] = {}
    for name, module in layers.items():
        b = bits[name]
        info: dict[str, Any] = {"sensitivity": sens.get(name), "keep_float": name in forced}
        if b >= FLOAT_BITS:
            entries[name] = {"type": type(module).__name__, "bits": FLOAT_BITS, **info}
            continue
        gs, sym = layer_format(shapes[name][1], b, config.group_size, config.symmetric)
        new = quantize_module(module, b, gs, sym, "rtn")
        swap_module(model, name, new)
        packed[name] = new
        entries[name] = {**layer_entry(module, new, "rtn"), **info}
    stored = sum(format_nbytes(*shapes[n], bits[n], config.group_size, config.symmetric) for n in layers)
    hist: dict[str, int] = {}
    for b in bits.values():
        hist[str(b)] = hist.get(str(b), 0) + 1
    numel = sum(r * c for r, c in shapes.values())
    summary = {**size_summary(fp32, packed), "budget_bytes": int(budget), "total_weight_bytes": stored,
               "bits_histogram": hist, "mean_bits": sum(bits[n] * math.prod(shapes[n]) for n in layers) / numel}
    return Record(kind=config.kind, data={"layers": entries}, summary=summary)


@register_replay(MixedQuant)
def replay_mixed(model: nn.Module, record: Record) -> None:
    replay_layers(model, record.data["layers"])
