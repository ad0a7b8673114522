"""Least-squares reconstruction after structured pruning (``train.reconstruct``).

Removing input channels of a linear layer (or 1x1 conv) leaves its output short of what the
unpruned network computed. The remaining inputs are correlated with the removed ones, so
re-fitting the layer's weights on a few calibration batches recovers much of it without any
training loop: He et al. 2017 ("Channel pruning for accelerating very deep neural
networks") and ThiNet (Luo et al. 2017) reconstruct each pruned layer's output this way.

For each targeted layer the student's inputs ``X`` and the *teacher's* (unpruned model's)
outputs ``Y`` of the layer with the same name are collected, and the weights are refit by
ridge regression pulled towards their current values ``W0``::

    min_W,b  ||X W^T + b - Y||^2 / N  +  ridge * ||W - W0||^2

The pull keeps the fit well-posed when there are fewer samples than inputs (500 ImageNet
images against 1,152 kept head channels) and means ``ridge -> inf`` is a no-op. Shapes do
not change, so there is nothing to replay: the refit weights travel with the saved state.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from ..core import Context, MethodConfig, MethodError, Record, Targets, method_config, register_method
from ..core.context import forward_batches


def ridge_refit(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor | None,
                ridge: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights ``[O, I]`` (and bias ``[O]``) minimising ``||x W^T + b - y||^2 / N + ridge ||W - W0||^2``.

    ``x`` ``[N, I]`` are the layer's inputs, ``y`` ``[N, O]`` the outputs to reproduce. The
    bias (when the layer has one) is fitted freely; solved in float64 for stability.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"ridge_refit: expected x [N, I] and y [N, O], got {tuple(x.shape)} and {tuple(y.shape)}")
    if w0.shape != (y.shape[1], x.shape[1]):
        raise ValueError(f"ridge_refit: w0 must be [O, I] = {(y.shape[1], x.shape[1])}, got {tuple(w0.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge_refit: ridge must be >= 0, got {ridge}")
    n = x.shape[0]
    xd, yd, w0d = x.double(), y.double(), w0.double()
    if b0 is not None:
        xm, ym = xd.mean(0), yd.mean(0)  # centring fits the bias exactly: b = ym - W xm
        xd, yd = xd - xm, yd - ym
    gram = xd.T @ xd / n + ridge * torch.eye(x.shape[1], dtype=torch.float64)  # [I, I]
    rhs = xd.T @ yd / n + ridge * w0d.T  # [I, O]
    w = torch.linalg.solve(gram, rhs).T  # [O, I]
    b = None if b0 is None else ym - w @ xm
    return w.to(w0.dtype), None if b is None else b.to(b0.dtype)


def _mse(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> float:
    """Mean squared error of the layer ``x W^T + b`` against the targets ``y``."""
    out = x @ w.T if b is None else x @ w.T + b  # [N, O]
    return float(((out - y) ** 2).mean())


def _as_rows(t: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A layer's input/output as ``[samples, features]``: a 1x1 conv's pixels count as samples."""
    if isinstance(layer, nn.Conv2d):
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # [B*H*W, C]
    return t.reshape(-1, t.shape[-1])  # [B*T, F]


def _refittable(name: str, m: nn.Module) -> nn.Linear | nn.Conv2d:
    if isinstance(m, nn.Linear):
        return m
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.stride == (1, 1):
        return m
    raise MethodError(f"train.reconstruct: {name} is {type(m).__name__}; only nn.Linear and "
                      "1x1 stride-1 ungrouped nn.Conv2d layers can be refit")


@method_config
class ReconstructTrain(MethodConfig):
    """Refit pruned layers by ridge regression to the unpruned model's outputs (no training loop).

    Targets are the layers *after* a pruned one (e.g. the classifier whose input channels
    were removed); needs ``Context.teacher`` (the unpruned model, same layer names) and
    ``Context.calib_data``.
    """

    kind = "train.reconstruct"
    stage = "train"

    ridge: float = 1e-2
    calib_batches: int = 16

    def validate(self) -> None:
        self._require(self.ridge >= 0, "ridge", "a float >= 0", self.ridge)
        self._require(self.calib_batches >= 1, "calib_batches", "an int >= 1", self.calib_batches)


def _collect(model: nn.Module, names: list[str], data: Any, batches: int, what: str) -> dict[str, list[torch.Tensor]]:
    """Per layer name, the ``what`` ('input' or 'output') rows of each calibration batch."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = []
    for n in names:
        layer = model.get_submodule(n)

        def hook(mod: nn.Module, args: Any, out: Any, n: str = n) -> None:
            t = args[0] if what == "input" else out
            got[n].append(_as_rows(t.detach().float().cpu(), mod))
        hooks.append(layer.register_forward_hook(hook))
    forward_batches(model, itertools.islice(data, batches), hooks)
    return got


@register_method(ReconstructTrain)
def reconstruct(model: nn.Module, config: ReconstructTrain, targets: Targets, ctx: Context) -> Record:
    teacher = ctx.need("teacher", config.kind)
    data = ctx.need("calib_data", config.kind)
    layers = {n: _refittable(n, m) for n, m in targets.iter(model) if isinstance(m, (nn.Linear, nn.Conv2d))}
    if not layers:
        raise MethodError(f"{config.kind}: the targets select no nn.Linear or 1x1 nn.Conv2d layer")
    names = list(layers)
    for n in names:
        try:
            t_layer = teacher.get_submodule(n)
        except AttributeError:
            raise MethodError(f"{config.kind}: the teacher has no layer {n!r} to take targets from") from None
        if t_layer.weight.shape[0] != layers[n].weight.shape[0]:
            raise MethodError(f"{config.kind}: {n} has {layers[n].weight.shape[0]} outputs in the student and "
                              f"{t_layer.weight.shape[0]} in the teacher; only input channels may differ")
    xs = _collect(model, names, data, config.calib_batches, "input")
    ys = _collect(teacher, names, data, config.calib_batches, "output")
    report: dict[str, dict[str, float]] = {}
    for n in names:
        if not xs[n]:
            raise MethodError(f"{config.kind}: Context.calib_data yielded no batch")
        layer = layers[n]
        x, y = torch.cat(xs[n]), torch.cat(ys[n])  # [N, I], [N, O]
        w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1).float().cpu()  # [O, I]
        b0 = None if layer.bias is None else layer.bias.detach().float().cpu()
        w, b = ridge_refit(x, y, w0, b0, config.ridge)
        before, after = _mse(x, y, w0, b0), _mse(x, y, w, b)
        with torch.no_grad():
            layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight))
            if b is not None and layer.bias is not None:
                layer.bias.copy_(b.to(layer.bias))
        report[n] = {"samples": x.shape[0], "mse_before": round(before, 6), "mse_after": round(after, 6)}
    summary = {"layers": len(report), "mse_before": round(sum(r["mse_before"] for r in report.values()), 6),
               "mse_after": round(sum(r["mse_after"] for r in report.values()), 6)}
    return Record(kind=config.kind, data={"layers": report, "ridge": config.ridge}, summary=summary)
