"""``quantize.weight_only``: int8 / int4 (2..8-bit) weights with RTN, GPTQ or AWQ; float activations.

Weight-only quantisation shrinks the file and, where a mixed-precision kernel exists,
the memory traffic of the matmul; activations stay float so no activation calibration
can go wrong. The algorithms differ only in how codes are chosen:

* ``rtn``: round each weight to the nearest grid point (:mod:`.rtn`);
* ``gptq``: column-wise rounding with inverse-Hessian error feedback (:mod:`.gptq`);
  ``H`` comes from the layer's inputs on ``ctx.calib_data``;
* ``awq``: per-input-channel scaling chosen from activation magnitudes (:mod:`.awq`).

Calibration is one-shot: every layer's inputs are captured in one float forward pass
(the GPTQ paper feeds each block the outputs of the already quantised blocks; that
sequential variant is not implemented). Padding tokens are part of the captured inputs.
Layers that receive no input during calibration (e.g. an unused BERT pooler) fall back
to RTN and say so in the record. See :mod:`.wo_modules` for the stored format and
which layers run an int8 / int4 kernel.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from ..core.context import forward_batches
from ..core.modules import swap_module
from ..core.registry import register_replay
from .awq import awq_scales
from .gptq import HessianAccumulator, gptq_quantize
from .rtn import check_group, rtn_quantize
from .wo_modules import PackedWeight, packed_module, stored_nbytes, weight_matrix

Algorithm = Literal["rtn", "gptq", "awq"]


@method_config
class WeightOnlyQuant(MethodConfig):
    """Weight-only quantisation of Linear (and, with RTN, Conv2d) weights: RTN, GPTQ or AWQ."""

    kind = "quantize.weight_only"
    stage = "quantize"

    bits: int = 8
    # None: one scale per output channel; else scales per run of group_size input weights.
    group_size: int | None = None
    algorithm: Algorithm = "rtn"
    # None: symmetric at 8 bits (the int8 kernel's format), asymmetric below 8 bits.
    symmetric: bool | None = None
    damp: float = 0.01
    blocksize: int = 128
    act_order: bool = False
    awq_grid: int = 20
    # calibration input rows kept per layer for AWQ's exact output-error search
    awq_rows: int = 4096

    def validate(self) -> None:
        self._require(2 <= self.bits <= 8, "bits", "an int in [2, 8]", self.bits)
        self._require(self.group_size is None or self.group_size >= 1, "group_size", "a positive int or null",
                      self.group_size)
        self._require(0.0 <= self.damp < 1.0, "damp", "a float in [0, 1)", self.damp)
        self._require(self.blocksize >= 1, "blocksize", "a positive int", self.blocksize)
        self._require(self.awq_grid >= 1, "awq_grid", "a positive int", self.awq_grid)
        self._require(self.awq_rows >= 1, "awq_rows", "a positive int", self.awq_rows)

    @property
    def is_symmetric(self) -> bool:
        return self.bits == 8 if self.symmetric is None else self.symmetric


@dataclasses.dataclass
class LayerStats:
    """What calibration saw at one layer's input."""

    hessian: HessianAccumulator | None = None
    abs_sum: torch.Tensor | None = None  # [K]
    abs_max: torch.Tensor | None = None  # [K]
    rows: int = 0
    samples: list[torch.Tensor] = dataclasses.field(default_factory=list)  # [m, K] each

    @property
    def absmean(self) -> torch.Tensor:
        assert self.abs_sum is not None
        return self.abs_sum / max(1, self.rows)


def capture_inputs(model: nn.Module, layers: dict[str, nn.Module], batches: list[Any], *, hessian: bool,
                   absmean: bool, absmax: bool = False, keep_rows: int = 0,
                   seed: int = 0) -> dict[str, LayerStats]:
    """One float forward pass over ``batches`` recording each layer's input statistics.

    ``hessian``: running ``2 X^T X / M``; ``absmean``: ``mean |x_j|``; ``absmax``:
    ``max |x_j|``; ``keep_rows``:
    about that many input rows per layer, sampled evenly over the batches.
    """
    stats = {name: LayerStats() for name in layers}
    per_batch = math.ceil(keep_rows / max(1, len(batches))) if keep_rows else 0
    gen = torch.Generator().manual_seed(seed)

    def hook(name: str):
        def fn(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # [M, K]
            st = stats[name]
            if hessian:
                st.hessian = st.hessian or HessianAccumulator(x.shape[1])
                st.hessian.add(x)
            if absmean:
                a = x.abs().sum(0)
                st.abs_sum = a if st.abs_sum is None else st.abs_sum + a
            if absmax:
                m = x.abs().amax(0)
                st.abs_max = m if st.abs_max is None else torch.maximum(st.abs_max, m)
            st.rows += x.shape[0]
            if per_batch:
                idx = torch.randperm(x.shape[0], generator=gen)[:per_batch]
                st.samples.append(x[idx].clone())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    forward_batches(model, batches, handles)
    return stats


def select_layers(model: nn.Module, targets: Targets, conv: bool) -> dict[str, nn.Module]:
    """Targeted Linear (and Conv2d when ``conv``) modules; already packed modules are skipped."""
    kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d) if conv else (nn.Linear,)
    return {n: m for n, m in targets.iter(model) if isinstance(m, kinds) and n}


def quantize_module(module: nn.Module, bits: int, group_size: int | None, symmetric: bool,
                    algorithm: Algorithm = "rtn", stats: LayerStats | None = None,
                    config: WeightOnlyQuant | None = None) -> PackedWeight:
    """A packed copy of ``module`` (Linear / Conv2d) quantised with ``algorithm``."""
    w = weight_matrix(module)  # [N, K]
    check_group(w.shape[1], group_size)
    cfg = config or WeightOnlyQuant(bits=bits, group_size=group_size, algorithm=algorithm)
    s = None
    if algorithm == "gptq" and stats is not None and stats.hessian is not None:
        triple = gptq_quantize(w, stats.hessian.value(), bits, group_size, blocksize=cfg.blocksize,
                               damp=cfg.damp, act_order=cfg.act_order, symmetric=symmetric)
    elif algorithm == "awq" and stats is not None and stats.abs_sum is not None:
        x = torch.cat(stats.samples) if stats.samples else None
        s = awq_scales(w, stats.absmean, bits, group_size, cfg.awq_grid, x=x, symmetric=symmetric)  # [K]
        triple = rtn_quantize(w * s, bits, group_size, symmetric)
    else:
        triple = rtn_quantize(w, bits, group_size, symmetric)
    new = packed_module(module, bits, group_size, symmetric, input_scale=s is not None)
    new.set_quantized(*triple)
    with torch.no_grad():
        if s is not None:
            new.input_scale.copy_(1.0 / s)
        if getattr(module, "bias", None) is not None:
            new.bias.copy_(module.bias.detach())
    return new


def layer_entry(module: nn.Module, packed: PackedWeight, algorithm: str) -> dict[str, Any]:
    """The record entry ``replay_layers`` needs to rebuild ``packed`` in a dense model."""
    return {"type": type(module).__name__, "bits": packed.bits, "group_size": packed.group_size,
            "symmetric": packed.symmetric, "input_scale": bool(packed.input_scale.numel()),
            "algorithm": algorithm, "kernel": packed.kernel}


def replay_layers(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    """Swap each named dense layer for an empty packed module of the recorded format."""
    for name, e in layers.items():
        if int(e["bits"]) >= 32:
            continue  # kept in float
        dense = model.get_submodule(name)
        swap_module(model, name, packed_module(dense, int(e["bits"]), e["group_size"], bool(e["symmetric"]),
                                                 input_scale=bool(e.get("input_scale", False))))


def size_summary(fp32_bytes: int, packed: dict[str, PackedWeight]) -> dict[str, Any]:
    q = sum(stored_nbytes(m) for m in packed.values())
    numel = sum(m.rows * m.cols for m in packed.values())
    kernels: dict[str, int] = {}
    for m in packed.values():
        kernels[m.kernel] = kernels.get(m.kernel, 0) + 1
    return {"layers": len(packed), "weight_bytes_fp32": fp32_bytes, "weight_bytes": q,
            "bits_per_weight": 8.0 * q / numel if numel else 0.0, "kernels": kernels}


@register_method(WeightOnlyQuant)
def weight_only(model: nn.Module, config: WeightOnlyQuant, targets: Targets, ctx: Context) -> Record:
    layers = select_layers(model, targets, conv=config.algorithm == "rtn")
    if not layers:
        raise MethodError(f"{config.kind}: the targets select no Linear layer ({targets.to_dict()})")
    stats: dict[str, LayerStats] = {}
    if config.algorithm != "rtn":
        batches = list(ctx.need("calib_data", f"{config.kind} with algorithm={config.algorithm!r}"))
        if not batches:
            raise MethodError(f"{config.kind}: Context.calib_data is empty")
        stats = capture_inputs(model, layers, batches, hessian=config.algorithm == "gptq",
                               absmean=config.algorithm == "awq",
                               keep_rows=config.awq_rows if config.algorithm == "awq" else 0, seed=ctx.seed)
    entries: dict[str, dict[str, Any]] = {}
    packed: dict[str, PackedWeight] = {}
    fp32 = 0
    for name, module in layers.items():
        st = stats.get(name)
        algo = config.algorithm if st is None or st.rows else "rtn"  # no calibration input: plain RTN
        try:
            new = quantize_module(module, config.bits, config.group_size, config.is_symmetric, algo, st, config)
        except Exception as exc:
            raise MethodError(f"{config.kind}: cannot quantise {name!r}: {exc}") from exc
        fp32 += module.weight.numel() * 4
        swap_module(model, name, new)
        packed[name] = new
        entries[name] = layer_entry(module, new, algo)
    return Record(kind=config.kind, data={"layers": entries}, summary=size_summary(fp32, packed))


@register_replay(WeightOnlyQuant)
def replay_weight_only(model: nn.Module, record: Record) -> None:
    replay_layers(model, record.data["layers"])
