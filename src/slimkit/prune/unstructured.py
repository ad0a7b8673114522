"""Registered one-shot unstructured / semi-structured sparsity methods.

Data-free: ``prune.block``, ``prune.nm`` (``prune.magnitude`` lives in :mod:`.magnitude`).
With data: ``prune.obd`` (loss gradients), ``prune.sparsegpt`` and ``prune.wanda``
(layer inputs, Linear layers only). Methods that prune while training are in
:mod:`.gradual`. The math is in :mod:`.sparsity`; this module only moves tensors in and
out of modules. Every record holds the sparsity each tensor reached; zeros are plain data, so
``slimkit.restore`` needs no replay and ``slimkit.save`` stores them as CSR.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core import (
    Context,
    MethodConfig,
    MethodError,
    Record,
    Targets,
    method_config,
    register_method,
)
from ..core.context import forward_batches
from .magnitude import prunable_params
from .masks import global_topk_masks, sparsity_of, topk_mask
from .sparsity import (
    block_scores,
    expand_block_mask,
    nm_mask,
    obd_saliency,
    rowwise_mask,
    sparsegpt_prune,
    wanda_scores,
)


def _sparsity_record(kind: str, params: Sequence[tuple[str, torch.Tensor]], **summary: Any) -> Record:
    layers = {n: {"sparsity": round(sparsity_of(p), 6), "numel": p.numel()} for n, p in params}
    total = sum(p.numel() for _, p in params)
    zeros = sum(p.numel() - int(torch.count_nonzero(p)) for _, p in params)
    return Record(kind=kind, data={"params": layers}, summary={"sparsity": zeros / max(1, total), "numel": total,
                                                                **summary})


def _params(model: nn.Module, targets: Targets, kind: str) -> list[tuple[str, nn.Parameter]]:
    params = prunable_params(model, targets, include_bias=False)
    if not params:
        raise MethodError(f"{kind}: the targets select no weight to prune ({targets.to_dict()})")
    return params


def _batches(ctx: Context, kind: str, limit: int | None, attrs: tuple[str, ...]) -> list[Any]:
    """Up to ``limit`` batches from the first of ``attrs`` that is set on ``ctx``."""
    data: Iterable[Any] | None = next((getattr(ctx, a) for a in attrs if getattr(ctx, a) is not None), None)
    if data is None:
        raise MethodError(f"{kind} needs Context.{' or Context.'.join(attrs)}, which is not set")
    out = list(itertools.islice(data, limit)) if limit else list(data)
    if not out:
        raise MethodError(f"{kind}: Context.{attrs[0]} has no batches")
    return out


def _check_sparsity(cfg: MethodConfig, value: float) -> None:
    cfg._require(0.0 <= value < 1.0, "sparsity", "a float in [0, 1)", value)


# -- block and N:M -----------------------------------------------------------------------------

@method_config
class BlockPrune(MethodConfig):
    """Block sparsity: keep the highest-scoring ``block`` tiles (max |w| or L2) of each weight matrix."""

    kind = "prune.block"
    stage = "sparsify"

    sparsity: float = 0.5
    block: tuple[int, int] = (4, 4)
    reduce: Literal["max", "l2"] = "max"
    scope: Literal["layer", "global"] = "layer"

    def validate(self) -> None:
        _check_sparsity(self, self.sparsity)
        self._require(self.block[0] >= 1 and self.block[1] >= 1, "block", "two positive ints", self.block)


@register_method(BlockPrune)
def block_prune(model: nn.Module, config: BlockPrune, targets: Targets, ctx: Context) -> Record:
    params = _params(model, targets, config.kind)
    scores = [block_scores(p, config.block, config.reduce) for _, p in params]  # [rows/bh, cols/bw] each
    if config.scope == "global":
        keeps = global_topk_masks(scores, config.sparsity)
    else:
        keeps = [topk_mask(s, config.sparsity) for s in scores]
    with torch.no_grad():
        for (_, p), keep in zip(params, keeps):
            p.mul_(expand_block_mask(keep, config.block, p.shape).to(p.dtype))
    return _sparsity_record(config.kind, params, block=list(config.block))


@method_config
class NMPrune(MethodConfig):
    """N:M (bank-balanced) sparsity: keep the ``n`` largest |w| of every ``m`` consecutive inputs (2:4 by default)."""

    kind = "prune.nm"
    stage = "sparsify"

    n: int = 2
    m: int = 4

    def validate(self) -> None:
        self._require(0 < self.n <= self.m, "n", f"an int in [1, m={self.m}]", self.n)


def _nm_or_error(scores: torch.Tensor, n: int, m: int, name: str, kind: str) -> torch.Tensor:
    try:
        return nm_mask(scores, n, m)
    except ValueError as exc:
        raise MethodError(f"{kind}: cannot make {name} {n}:{m} sparse: {exc}; exclude it from the targets") from exc


@register_method(NMPrune)
def nm_prune(model: nn.Module, config: NMPrune, targets: Targets, ctx: Context) -> Record:
    params = _params(model, targets, config.kind)
    masks = [_nm_or_error(p.detach().abs(), config.n, config.m, name, config.kind) for name, p in params]
    with torch.no_grad():
        for (_, p), keep in zip(params, masks):
            p.mul_(keep.to(p.dtype))
    return _sparsity_record(config.kind, params, n=config.n, m=config.m)


# -- OBD ---------------------------------------------------------------------------------------

@method_config
class ObdPrune(MethodConfig):
    """Optimal Brain Damage: prune the lowest ``1/2 F_ii w_i^2`` with the empirical Fisher diagonal."""

    kind = "prune.obd"
    stage = "sparsify"

    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    # Labelled batches to average the Fisher over (None = all): ctx.train_data, which
    # ctx.loss_fn understands, else ctx.calib_data when that holds labelled batches.
    batches: int | None = 16
    # "sample": square per-sample gradients (the empirical Fisher; needs every tensor of a
    # batch to hold the samples along dim 0); "batch": square whole-batch gradients (any
    # batch layout, much noisier, since cross-sample terms do not cancel in so few batches;
    # measured: docs/pruning.md#figures-behind-design-choices-in-the-code); "auto":
    # per-sample when the batches can be split, else per-batch.
    fisher: Literal["auto", "sample", "batch"] = "auto"

    def validate(self) -> None:
        _check_sparsity(self, self.sparsity)
        self._require(self.batches is None or self.batches > 0, "batches", "a positive int or null", self.batches)


def split_batch(batch: Any, size: int) -> list[Any]:
    """Cut a tensor / tuple / list / dict batch into chunks of ``size`` samples along dim 0."""
    tensors: list[torch.Tensor] = []

    def collect(b: Any) -> None:
        if isinstance(b, torch.Tensor):
            tensors.append(b)
        elif isinstance(b, (tuple, list)):
            for v in b:
                collect(v)
        elif isinstance(b, dict):
            for v in b.values():
                collect(v)

    collect(batch)
    sizes = {t.shape[0] for t in tensors if t.dim() > 0}
    if len(sizes) != 1:
        raise MethodError(f"cannot split a batch whose tensors have different leading sizes {sorted(sizes)}; "
                          "use fisher='batch'")
    n = sizes.pop()

    def cut(b: Any, i: int) -> Any:
        if isinstance(b, torch.Tensor):
            return b[i:i + size] if b.dim() > 0 else b
        if isinstance(b, (tuple, list)):
            return type(b)(cut(v, i) for v in b)
        if isinstance(b, dict):
            return {k: cut(v, i) for k, v in b.items()}
        return b

    return [cut(batch, i) for i in range(0, n, size)]


def empirical_fisher(model: nn.Module, params: Sequence[tuple[str, torch.Tensor]], loss_fn: Any,
                     batches: list[Any], microbatch: int | None = None) -> list[torch.Tensor]:
    """Mean squared gradient of ``loss_fn`` over (micro-)batches: the empirical Fisher diagonal.

    With ``microbatch=1`` this is ``mean_n (dL_n/dw)^2`` over samples n, the usual
    estimate of the Hessian diagonal near a minimum. The model runs in eval mode
    (BatchNorm statistics are not touched); gradients of the model are left cleared.
    """
    fisher = [torch.zeros_like(p, dtype=torch.float32) for _, p in params]
    pieces = [m for b in batches for m in split_batch(b, microbatch)] if microbatch else batches
    was_training = model.training
    model.eval()
    try:
        for piece in pieces:
            model.zero_grad(set_to_none=True)
            loss_fn(model, piece).backward()
            for f, (_, p) in zip(fisher, params):
                if p.grad is not None:
                    f += p.grad.detach().float() ** 2
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return [f / len(pieces) for f in fisher]


@register_method(ObdPrune)
def obd_prune(model: nn.Module, config: ObdPrune, targets: Targets, ctx: Context) -> Record:
    params = _params(model, targets, config.kind)
    loss_fn = ctx.need("loss_fn", config.kind)
    batches = _batches(ctx, config.kind, config.batches, ("train_data", "calib_data"))
    mode = config.fisher
    if mode == "auto":
        try:
            split_batch(batches[0], 1)
            mode = "sample"
        except MethodError:
            mode = "batch"
    fisher = empirical_fisher(model, params, loss_fn, batches, 1 if mode == "sample" else None)
    scores = [obd_saliency(p, f) for (_, p), f in zip(params, fisher)]
    masks = global_topk_masks(scores, config.sparsity) if config.scope == "global" else \
        [topk_mask(s, config.sparsity) for s in scores]
    with torch.no_grad():
        for (_, p), keep in zip(params, masks):
            p.mul_(keep.to(p.dtype))
    return _sparsity_record(config.kind, params, batches=len(batches), fisher=mode)


# -- calibration statistics for SparseGPT / Wanda ----------------------------------------------

def linear_input_stats(model: nn.Module, layers: list[tuple[str, nn.Linear]], batches: list[Any],
                       hessian: bool) -> dict[str, dict[str, Any]]:
    """Run the calibration batches and collect, per Linear, ``sq`` (sum of x_j^2, ``[in]``),
    ``n`` (rows seen) and, if ``hessian``, ``H = sum x x^T`` (``[in, in]``, float64)."""
    stats: dict[str, dict[str, Any]] = {}
    handles = []

    def make(name: str, lin: nn.Linear) -> Any:
        st: dict[str, Any] = {"sq": torch.zeros(lin.in_features, dtype=torch.float64), "n": 0}
        if hessian:
            st["H"] = torch.zeros(lin.in_features, lin.in_features, dtype=torch.float64)
        stats[name] = st

        def pre(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, lin.in_features).double()  # [N, in]
            st["sq"] += (x**2).sum(0)
            st["n"] += x.shape[0]
            if hessian:
                st["H"] += x.T @ x

        return pre

    for name, lin in layers:
        handles.append(lin.register_forward_pre_hook(make(name, lin)))
    forward_batches(model, batches, handles)
    return stats


def _linears(model: nn.Module, targets: Targets, kind: str) -> tuple[list[tuple[str, nn.Linear]], list[str]]:
    """Targeted Linear layers, and the names of targeted weight-bearing modules skipped."""
    lins, skipped = [], []
    for name, mod in targets.iter(model):
        if isinstance(mod, nn.Linear):
            lins.append((name, mod))
        elif isinstance(getattr(mod, "weight", None), torch.Tensor) and mod.weight.dim() >= 2:  # type: ignore
            skipped.append(name)
    if not lins:
        raise MethodError(f"{kind} prunes Linear layers; the targets select none ({targets.to_dict()})")
    return lins, skipped


@method_config
class SparseGPTPrune(MethodConfig):
    """SparseGPT: layer-wise OBS pruning of Linear layers with weight updates from calibration inputs."""

    kind = "prune.sparsegpt"
    stage = "sparsify"

    sparsity: float = 0.5
    n: int = 0  # n, m > 0: N:M pattern instead of a sparsity fraction
    m: int = 0
    blocksize: int = 128
    damp: float = 0.01
    sequential: bool = True  # calibrate each layer on the outputs of the already-pruned layers before it
    batches: int | None = None

    def validate(self) -> None:
        _check_sparsity(self, self.sparsity)
        self._require((self.n == 0 and self.m == 0) or 0 < self.n <= self.m, "n", "0 (with m=0) or 0 < n <= m", self.n)
        self._require(self.blocksize > 0 and (self.m == 0 or self.blocksize % self.m == 0), "blocksize",
                      "a positive multiple of m", self.blocksize)
        self._require(self.damp > 0, "damp", "a positive float", self.damp)


@method_config
class WandaPrune(MethodConfig):
    """Wanda: drop the lowest ``|W_ij| * ||X_j||_2`` in every output row, no weight update."""

    kind = "prune.wanda"
    stage = "sparsify"

    sparsity: float = 0.5
    n: int = 0
    m: int = 0
    sequential: bool = True
    batches: int | None = None

    def validate(self) -> None:
        _check_sparsity(self, self.sparsity)
        self._require((self.n == 0 and self.m == 0) or 0 < self.n <= self.m, "n", "0 (with m=0) or 0 < n <= m", self.n)


def _calibrated_prune(model: nn.Module, config: SparseGPTPrune | WandaPrune, targets: Targets, ctx: Context) -> Record:
    lins, skipped = _linears(model, targets, config.kind)
    batches = _batches(ctx, config.kind, config.batches, ("calib_data",))  # forward-only inputs
    use_h = isinstance(config, SparseGPTPrune)
    groups = [[lin] for lin in lins] if config.sequential else [lins]
    calib_rows = 0
    for group in groups:
        stats = linear_input_stats(model, group, batches, hessian=use_h)
        calib_rows = max(calib_rows, *(int(st["n"]) for st in stats.values()))
        for name, lin in group:
            W = lin.weight
            st = stats[name]
            with torch.no_grad():
                if isinstance(config, SparseGPTPrune):
                    if config.n and W.shape[1] % config.m:
                        raise MethodError(f"{config.kind}: {name} has {W.shape[1]} inputs, not a multiple of "
                                          f"m={config.m}")
                    new, _ = sparsegpt_prune(W, st["H"], config.sparsity, n=config.n, m=config.m,
                                             blocksize=config.blocksize, damp=config.damp)
                    W.copy_(new)
                else:
                    scores = wanda_scores(W, st["sq"].sqrt().to(W.dtype))  # [out, in]
                    keep = _nm_or_error(scores, config.n, config.m, name, config.kind) if config.n \
                        else rowwise_mask(scores, config.sparsity)
                    W.mul_(keep.to(W.dtype))
    params = [(f"{name}.weight", lin.weight) for name, lin in lins]
    rec = _sparsity_record(config.kind, params, calib_rows=calib_rows)
    rec.data["skipped"] = skipped
    return rec


register_method(SparseGPTPrune)(_calibrated_prune)
register_method(WandaPrune)(_calibrated_prune)


__all__ = [
    "BlockPrune", "NMPrune", "ObdPrune", "SparseGPTPrune", "WandaPrune", "empirical_fisher", "linear_input_stats",
    "split_batch",
]
