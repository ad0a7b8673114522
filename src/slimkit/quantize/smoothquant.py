"""``quantize.smoothquant`` (Xiao et al. 2023): move activation outliers into the weights before int8.

Transformer activations have a few input channels with values 10-100x the rest, so a
per-tensor int8 activation scale wastes almost all codes on them, while weights are
flat and easy to quantise. Per input channel ``j``, SmoothQuant divides the activation by
``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` and multiplies the weight column by it
(``(X / s)(s W)^T = X W^T``), balancing the difficulty between the two. It is a float ->
float transform (outputs are equal up to rounding); the int8 weight + activation
quantisation that profits from it is a later recipe step (``stage = "quantize"``, so it
must come first among the quantize steps).

Where ``1 / s`` goes: the paper folds it into the preceding LayerNorm. That is exact
only when the LayerNorm output feeds nothing but the smoothed Linears (pre-LN models such
as OPT / LLaMA). In post-LN BERT (MiniLM) the LayerNorm output is *also* the residual
input of the next add, so folding would change the residual; and the FFN-out input is
``GELU(intermediate)``, which is not scale-equivariant, so it cannot fold into
``intermediate.dense`` rows either. slimkit therefore keeps ``1 / s`` as an explicit
per-channel multiply: each smoothed Linear becomes :class:`SmoothedLinear`, which holds
the rescaled ``nn.Linear`` as its child ``.linear`` (so ``Targets(types=("Linear",))``
of a later int8 step finds it, named ``<name>.linear``, and quantises the *smoothed*
input). The multiply costs ``K`` flops per token; folding into pre-LN LayerNorms is not
implemented.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from ..core.errors import ConfigError
from ..core.modules import swap_module
from ..core.registry import register_replay
from .weight_only import capture_inputs


def smooth_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float = 0.5,
                  eps: float = 1e-5) -> torch.Tensor:
    """Per-input-channel ``s [K] = max|X_j|^alpha / max|W_j|^(1 - alpha)``; 1 where a channel is all zero."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"expected alpha in [0, 1], got {alpha!r}", key="alpha")
    if x_absmax.shape != w_absmax.shape or x_absmax.dim() != 1:
        raise ConfigError(f"expected two vectors [K] of equal length, got {tuple(x_absmax.shape)} and "
                          f"{tuple(w_absmax.shape)}", key="x_absmax")
    xa = x_absmax.float().clamp(min=eps)
    wa = w_absmax.float().clamp(min=eps)
    s = xa**alpha / wa ** (1.0 - alpha)  # [K]
    dead = (x_absmax <= 0) | (w_absmax <= 0)
    return torch.where(dead, torch.ones_like(s), s)


def outlier_ratio(absmax: torch.Tensor) -> float:
    """``max / median`` of per-channel activation maxima: how much a per-tensor scale is stretched."""
    return float(absmax.max() / absmax.median().clamp(min=1e-8))


class SmoothedLinear(nn.Module):
    """``linear(x * inv_scale)`` with the Linear's weight columns already multiplied by ``1 / inv_scale``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inv_scale", torch.ones(linear.in_features))

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., K]
        return self.linear(x * self.inv_scale)


def smooth_linear(linear: nn.Linear, s: torch.Tensor) -> SmoothedLinear:
    """Wrap ``linear`` with its weight columns scaled by ``s [K]`` (in place) and inputs by ``1 / s``."""
    with torch.no_grad():
        linear.weight.mul_(s.to(linear.weight.dtype))  # [N, K] * [K]
    out = SmoothedLinear(linear)
    with torch.no_grad():
        out.inv_scale.copy_(1.0 / s)
    return out


@method_config
class SmoothQuant(MethodConfig):
    """SmoothQuant: migrate activation outliers into Linear weights (float-equivalent; run before int8)."""

    kind = "quantize.smoothquant"
    stage = "quantize"

    alpha: float = 0.5

    def validate(self) -> None:
        self._require(0.0 <= self.alpha <= 1.0, "alpha", "a float in [0, 1]", self.alpha)


@register_method(SmoothQuant)
def smoothquant(model: nn.Module, config: SmoothQuant, targets: Targets, ctx: Context) -> Record:
    layers = {n: m for n, m in targets.iter(model) if n and type(m) is nn.Linear}
    if not layers:
        raise MethodError(f"{config.kind}: the targets select no Linear layer ({targets.to_dict()})")
    batches = list(ctx.need("calib_data", config.kind))
    if not batches:
        raise MethodError(f"{config.kind}: Context.calib_data is empty")
    stats = capture_inputs(model, layers, batches, hessian=False, absmean=False, absmax=True)
    entries: dict[str, Any] = {}
    for name, lin in layers.items():
        st = stats[name]
        if st.abs_max is None:
            continue  # never called during calibration: nothing to balance
        w_absmax = lin.weight.detach().abs().amax(0)  # [K]
        s = smooth_scales(st.abs_max, w_absmax, config.alpha)
        swap_module(model, name, smooth_linear(lin, s))
        entries[name] = {"x_max_over_median": round(outlier_ratio(st.abs_max), 3),
                         "x_max_over_median_after": round(outlier_ratio(st.abs_max / s), 3)}
    if not entries:
        raise MethodError(f"{config.kind}: no targeted Linear received input from Context.calib_data")
    before = [e["x_max_over_median"] for e in entries.values()]
    after = [e["x_max_over_median_after"] for e in entries.values()]
    return Record(kind=config.kind, data={"layers": entries},
                  summary={"layers": len(entries), "mean_outlier_ratio_before": sum(before) / len(before),
                           "mean_outlier_ratio_after": sum(after) / len(after)})


@register_replay(SmoothQuant)
def replay_smoothquant(model: nn.Module, record: Record) -> None:
    for name in record.data["layers"]:
        lin = model.get_submodule(name)
        if type(lin) is not nn.Linear:
            raise MethodError(f"cannot replay {record.kind}: {name!r} is a {type(lin).__name__}, not a Linear")
        swap_module(model, name, SmoothedLinear(lin))
