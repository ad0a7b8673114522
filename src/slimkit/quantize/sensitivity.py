"""Per-layer quantisation sensitivity: Hessian trace (HAWQ) and a measured output-error probe.

Both feed :func:`slimkit.quantize.mixed.allocate_bits`, which minimises
``sum_l sensitivity_l * ||Q_b(W_l) - W_l||^2`` under a size budget:

* **Hessian trace** (HAWQ-v2, Dong et al. 2020): a second-order Taylor expansion of the
  loss around the float weights gives ``dL ~ 1/2 dW^T H dW``; with the quantisation noise
  treated as isotropic, ``E[dL] ~ tr(H_l) / n_l * ||dW_l||^2 / 2``. The trace is estimated
  with Hutchinson's estimator ``tr(H) = E_v[v^T H v]`` for Rademacher ``v``, where ``Hv``
  is one double-backward pass (no Hessian is ever formed).
* **Measured-error probe**: quantise one layer at a time, run calibration inputs and
  measure how far the model output moves (MSE, or KL of softmax outputs). It needs no
  labels or gradients and captures what the trace misses (non-quadratic effects, layers
  feeding softmax); it costs one forward pass over the probe batches per layer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.context import call_model, select_output
from ..core.errors import ConfigError, MethodError


def rademacher_like(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A tensor of ``p``'s shape with independent +-1 entries."""
    bits = torch.randint(0, 2, p.shape, generator=generator, device=p.device)
    return (bits * 2 - 1).to(p.dtype)


def hutchinson_trace(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], n_samples: int = 16,
                     *, generator: torch.Generator | None = None) -> list[float]:
    """Estimate ``tr(H_pp)`` (the Hessian block of each tensor in ``params``) of ``loss_fn()``.

    One probe ``v`` spans all tensors; ``v_p^T (H v)_p`` is unbiased for ``tr(H_pp)``
    because the cross terms have zero mean. Returns one trace per tensor, averaged over
    ``n_samples`` probes.
    """
    if n_samples < 1:
        raise ConfigError(f"expected a positive int, got {n_samples!r}", key="n_samples")
    params = list(params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    traces = [0.0] * len(params)
    for _ in range(n_samples):
        vs = [rademacher_like(p, generator) for p in params]
        hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
        for i, (v, hv) in enumerate(zip(vs, hvs)):
            traces[i] += float((v * hv).sum())
    return [t / n_samples for t in traces]


def layer_traces(model: nn.Module, layer_names: Sequence[str], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                 batches: Sequence[Any], n_samples: int = 8, seed: int = 0) -> dict[str, float]:
    """Hutchinson trace of each named layer's ``weight`` block, averaged over ``batches``.

    Runs in eval mode (no dropout noise in the curvature) with the math attention kernel
    (the fused CPU attention kernels have no double backward).
    """
    if not batches:
        raise MethodError("Hessian sensitivity needs at least one training batch")
    weights = [model.get_submodule(n).weight for n in layer_names]
    flags = [w.requires_grad for w in weights]
    was_training = model.training
    gen = torch.Generator().manual_seed(seed)
    total = [0.0] * len(weights)
    model.eval()
    try:
        for w in weights:
            w.requires_grad_(True)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            for batch in batches:
                tr = hutchinson_trace(lambda b=batch: loss_fn(model, b), weights, n_samples, generator=gen)
                total = [a + b for a, b in zip(total, tr)]
    finally:
        for w, f in zip(weights, flags):
            w.requires_grad_(f)
        model.train(was_training)
    return {n: t / len(batches) for n, t in zip(layer_names, total)}


def output_distance(ref: torch.Tensor, out: torch.Tensor, metric: Literal["mse", "kl"]) -> float:
    """MSE of the outputs, or ``KL(softmax(ref) || softmax(out))`` over the last dim (mean over rows)."""
    if metric == "mse":
        return float(((out.float() - ref.float()) ** 2).mean())
    if metric == "kl":
        logp = F.log_softmax(out.float(), dim=-1)
        logq = F.log_softmax(ref.float(), dim=-1)
        return float(F.kl_div(logp.reshape(-1, logp.shape[-1]), logq.reshape(-1, logq.shape[-1]),
                              log_target=True, reduction="batchmean"))
    raise ConfigError(f"expected 'mse' or 'kl', got {metric!r}", key="metric")


def measured_error_probe(model: nn.Module, layer_names: Sequence[str],
                         quantize_fn: Callable[[torch.Tensor], torch.Tensor], inputs: Sequence[Any],
                         metric: Literal["mse", "kl"] = "mse") -> dict[str, float]:
    """Output distance when only layer ``l``'s weight is replaced by ``quantize_fn(weight)``.

    ``quantize_fn`` returns a float tensor of the weight's shape (quantise-dequantise).
    Every weight is restored afterwards, also on error.
    """
    if not inputs:
        raise MethodError("the measured-error probe needs at least one calibration batch")
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        with torch.no_grad():
            refs = [select_output(call_model(model, b)) for b in inputs]
            for name in layer_names:
                w = model.get_submodule(name).weight
                orig = w.detach().clone()
                try:
                    w.copy_(quantize_fn(orig).to(w.dtype).reshape(w.shape))
                    dists = [output_distance(r, select_output(call_model(model, b)), metric)
                             for r, b in zip(refs, inputs)]
                finally:
                    w.copy_(orig)
                out[name] = sum(dists) / len(dists)
    finally:
        model.train(was_training)
    return out
