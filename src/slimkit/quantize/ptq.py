"""Post-training quantization methods on PyTorch's int8 kernels, and fp16/bf16 casting.

- ``quantize.dynamic``: targeted ``Linear`` layers become :class:`Int8Linear` (int8
  weights, activations quantized per call) and ``LSTM`` / ``GRU`` layers
  :class:`~.int8_recurrent.Int8RNN`; no data needed.
- ``quantize.static``: targeted ``Linear`` / ``Conv2d`` layers become static int8 modules
  whose uint8 input/output ranges come from observers run over ``ctx.calib_data``.
- ``quantize.cast``: targeted modules hold fp16/bf16 weights and compute in that dtype;
  inputs are cast down and outputs back up at the module boundary.

The int8 weight codes follow the CPU (:mod:`slimkit.core.cpu`): full 8-bit codes where the
int8 dot product accumulates in int32 (VNNI), 7-bit codes (``[-63, 63]``) where it adds pairs
into int16 and would saturate; ``weight_bits`` (7 / 8) fixes the choice. The record keeps the
decision and the CPU it was made on, and replaying an 8-bit artifact on a CPU without VNNI
warns (:class:`~slimkit.core.cpu.Int8IsaWarning`).

All three record the module structure, so ``slimkit.restore`` replays the swap and loads
the int8 codes, scales and ranges exactly (they are plain buffers). The ONNX Runtime
backend for the same ideas lives in :mod:`slimkit.export.ort_quant`.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, cpu, method_config, register_method
from ..core.context import forward_batches
from ..core.modules import swap_module
from ..core.record import dtype_named
from ..core.registry import register_replay
from ..measure.counter import register_mac_formula
from .affine import qparams
from .int8_modules import Int8Conv2d, Int8Linear, static_padding_of
from .int8_recurrent import Int8RNN, build_recurrent, recurrent_spec
from .observers import MinMaxObserver, MSEObserver, Observer, PercentileObserver

_OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


@method_config
class DynamicQuant(MethodConfig):
    """Dynamic int8 Linear layers on torch's x86 int8 GEMM (weights int8, activations per call)."""

    kind = "quantize.dynamic"
    stage = "quantize"

    per_channel: bool = True
    # "auto": 8-bit weight codes with a VNNI int8 dot product, 7-bit without (no int16 saturation)
    weight_bits: Literal["auto", 8, 7] = "auto"


@method_config
class StaticQuant(MethodConfig):
    """Static int8 Linear/Conv2d with activation ranges calibrated on ``ctx.calib_data``."""

    kind = "quantize.static"
    stage = "quantize"

    per_channel: bool = True
    weight_bits: Literal["auto", 8, 7] = "auto"  # as DynamicQuant.weight_bits
    observer: Literal["minmax", "percentile", "mse"] = "minmax"
    calib_batches: int = 8

    def validate(self) -> None:
        self._require(self.calib_batches >= 1, "calib_batches", "an integer >= 1", self.calib_batches)


@method_config
class CastQuant(MethodConfig):
    """Hold and compute targeted modules in float16 or bfloat16."""

    kind = "quantize.cast"
    stage = "quantize"

    dtype: Literal["float16", "bfloat16"] = "bfloat16"


# ------------------------------------------------------------------ module swapping

def _targets(model: nn.Module, targets: Targets, types: tuple[type, ...], method: str) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in targets.iter(model) if isinstance(m, types)]
    if not found:
        raise MethodError(f"{method}: the targets select no {'/'.join(t.__name__ for t in types)} layer")
    return found


def _linear_spec(m: nn.Linear) -> dict[str, Any]:
    return {"type": "Linear", "in": m.in_features, "out": m.out_features}


def _conv_spec(m: nn.Conv2d) -> dict[str, Any]:
    return {"type": "Conv2d", "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
            "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation), "groups": m.groups,
            "pre_pad": list(p) if (p := static_padding_of(m)) is not None else None}


def _build(spec: dict[str, Any], mode: str) -> nn.Module:
    if spec["type"] in ("LSTM", "GRU"):
        return build_recurrent(spec)
    if spec["type"] == "Linear":
        return Int8Linear(spec["in"], spec["out"], mode)  # type: ignore[arg-type]
    return Int8Conv2d(spec["in"], spec["out"], tuple(spec["kernel"]), tuple(spec["stride"]),  # type: ignore[arg-type]
                      tuple(spec["padding"]), tuple(spec["dilation"]), spec["groups"],
                      tuple(spec["pre_pad"]) if spec.get("pre_pad") is not None else None)


def _int8_bytes(specs: dict[str, dict[str, Any]], model: nn.Module) -> int:
    mods = dict(model.named_modules())
    return sum(b.numel() * b.element_size() for n in specs for b in mods[n].buffers())


@register_method(DynamicQuant)
def dynamic_int8(model: nn.Module, config: DynamicQuant, targets: Targets, ctx: Context) -> Record:
    layers = _targets(model, targets, (nn.Linear, nn.LSTM, nn.GRU), config.kind)
    qmax, isa = cpu.weight_choice(config.weight_bits)
    specs = {}
    for name, lin in layers:
        if isinstance(lin, nn.RNNBase):  # LSTM/GRU: int8 recurrent kernels (int8_recurrent.py)
            specs[name] = recurrent_spec(lin, config.kind)
            swap_module(model, name, Int8RNN.from_float(lin, config.per_channel, qmax))
            continue
        specs[name] = _linear_spec(lin)
        swap_module(model, name, Int8Linear.from_float(lin, "dynamic", config.per_channel, qmax))
    return Record(kind=config.kind, data={"mode": "dynamic", "layers": specs, "int8_isa": isa},
                  summary={"layers": len(specs), "int8_bytes": _int8_bytes(specs, model), "weight_qmax": qmax,
                           "int8_isa": isa["name"]})


@register_replay(DynamicQuant)
def replay_dynamic(model: nn.Module, record: Record) -> None:
    cpu.warn_if_poorer(record.data.get("int8_isa"), f"{record.kind} artifact")
    for name, spec in record.data["layers"].items():
        swap_module(model, name, _build(spec, "dynamic"))


# ------------------------------------------------------------------ static calibration

def calibrate_ranges(model: nn.Module, modules: list[tuple[str, nn.Module]], batches: list[Any],
                     make: type[Observer]) -> dict[str, tuple[Observer, Observer]]:
    """Run ``batches`` through the float model; observe each module's input and output (per tensor, uint8)."""
    obs = {n: (make(axis=None, symmetric=False, name=f"{n} input"),
               make(axis=None, symmetric=False, name=f"{n} output")) for n, _ in modules}
    hooks = []
    for name, mod in modules:
        def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor, name: str = name) -> None:
            obs[name][0].observe(args[0])
            obs[name][1].observe(out)
        hooks.append(mod.register_forward_hook(hook))
    forward_batches(model, batches, hooks)
    return obs


@register_method(StaticQuant)
def static_int8(model: nn.Module, config: StaticQuant, targets: Targets, ctx: Context) -> Record:
    layers = _targets(model, targets, (nn.Linear, nn.Conv2d), config.kind)
    batches = list(ctx.need("calib_data", config.kind))[: config.calib_batches]
    if not batches:
        raise MethodError(f"{config.kind}: Context.calib_data yielded no batch")
    obs = calibrate_ranges(model, layers, batches, _OBSERVERS[config.observer])
    unused = [name for name, _ in layers if obs[name][0].min_val is None or obs[name][1].min_val is None]
    if unused:
        raise MethodError(f"{config.kind}: layer(s) {', '.join(unused)} saw no calibration data (their forward never "
                          f"ran on the {len(batches)} calibration batch(es)), so they have no activation range; "
                          "exclude them from the targets, or calibrate with batches that reach them")
    qmax, isa = cpu.weight_choice(config.weight_bits)
    specs: dict[str, dict[str, Any]] = {}
    for name, mod in layers:
        in_s, in_zp = qparams(*obs[name][0].range(), bits=8, symmetric=False)
        out_s, out_zp = qparams(*obs[name][1].range(), bits=8, symmetric=False)
        if isinstance(mod, nn.Linear):
            specs[name] = _linear_spec(mod)
            new: nn.Module = Int8Linear.from_float(mod, "static", config.per_channel, qmax)
        else:
            try:
                new = Int8Conv2d.from_float(mod, config.per_channel, qmax)
                specs[name] = _conv_spec(mod)
            except ValueError as exc:
                raise MethodError(f"{config.kind}: {name}: {exc}") from exc
        new.set_act_ranges(float(in_s), int(in_zp), float(out_s), int(out_zp))  # type: ignore[operator]
        swap_module(model, name, new)
    return Record(kind=config.kind, data={"mode": "static", "layers": specs, "int8_isa": isa},
                  summary={"layers": len(specs), "calib_batches": len(batches),
                           "int8_bytes": _int8_bytes(specs, model), "weight_qmax": qmax, "int8_isa": isa["name"]})


@register_replay(StaticQuant)
def replay_static(model: nn.Module, record: Record) -> None:
    cpu.warn_if_poorer(record.data.get("int8_isa"), f"{record.kind} artifact")
    for name, spec in record.data["layers"].items():
        swap_module(model, name, _build(spec, "static"))


# ------------------------------------------------------------------ fp16 / bf16

def _cast_in(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = module._slimkit_cast_dtype  # type: ignore[attr-defined]
    module._slimkit_in_dtype = next((a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()),
                                    torch.float32)  # type: ignore[attr-defined]
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _cast_out(module: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        return out.to(module._slimkit_in_dtype)  # type: ignore[attr-defined]
    return out


def cast_module(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast ``module``'s floating params/buffers to ``dtype`` and cast at its boundary."""
    module.to(dtype)
    module._slimkit_cast_dtype = dtype  # type: ignore[attr-defined]
    module.register_forward_pre_hook(_cast_in)
    module.register_forward_hook(_cast_out)


def _outermost(names: list[str]) -> list[str]:
    """Drop names nested inside another selected name (casting the parent covers them)."""
    out: list[str] = []
    for n in sorted(names, key=len):
        if not any(p == "" or n == p or n.startswith(p + ".") for p in out):
            out.append(n)
    return out


@register_method(CastQuant)
def cast_float(model: nn.Module, config: CastQuant, targets: Targets, ctx: Context) -> Record:
    names = _outermost([n for n, _ in targets.iter(model)])
    if not names:
        raise MethodError(f"{config.kind}: the targets select no module")
    _apply_cast(model, names, getattr(torch, config.dtype))
    return Record(kind=config.kind, data={"dtype": config.dtype, "modules": names},
                  summary={"modules": len(names), "dtype": config.dtype})


def _apply_cast(model: nn.Module, names: list[str], dtype: torch.dtype) -> None:
    mods = dict(model.named_modules())
    for n in names:
        cast_module(mods[n], dtype)


@register_replay(CastQuant)
def replay_cast(model: nn.Module, record: Record) -> None:
    _apply_cast(model, list(record.data["modules"]), dtype_named(record.data["dtype"], f"{record.kind} replay"))


# ------------------------------------------------------------------ MAC formulas for the int8 ops

def _linear_macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return int(args[0].shape[-1]) * int(out.numel())  # K * (tokens x O)


def _conv_macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    w, _ = torch.ops.quantized.conv2d_unpack(args[1])  # [O, I/g, kh, kw]
    return int(w[0].numel()) * int(out.numel())  # (I/g * kh * kw) per output element


register_mac_formula("quantized::linear_dynamic", _linear_macs)
register_mac_formula("quantized::linear", _linear_macs)
register_mac_formula("quantized::conv2d", _conv_macs)
