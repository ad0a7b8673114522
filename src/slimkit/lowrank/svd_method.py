"""``lowrank.svd``: replace Linear and Embedding layers by two thin factors, gated by measured speed.

A ``Linear(in, out)`` becomes ``Sequential(Linear(in, r, bias=False), Linear(r, out))`` and an
``Embedding(V, H)`` becomes ``Sequential(Embedding(V, r), Linear(r, H, bias=False))``: plain
torch modules, so every exporter, runtime and :func:`slimkit.measure.profile` handles them
with no extra code. The rank comes from exactly one of ``rank``, ``ratio``, ``energy`` or
``budget`` (:mod:`.svd`); ``data_aware`` whitens each Linear by its input statistics from
``Context.calib_data`` so the error minimised is the layer's output error. A layer whose rank
would not reduce its parameters is left dense and listed in the record's ``skipped``; the
gate (:mod:`.gate`) may keep more layers dense (``data["gate"]`` says why, with the ratios).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import (
    ConfigError,
    Context,
    MethodError,
    Record,
    Targets,
    method_config,
    register_method,
    register_replay,
)
from ..core.context import forward_batches
from ..core.modules import swap_module
from ..core.progress import Progress
from .gate import GateOptions, capture_inputs, decide, n_params, summarize
from .svd import (
    allocate_budget,
    break_even_rank,
    decompose,
    factorize,
    rank_for_energy,
    rank_for_ratio,
    truncate,
    whitener,
)

KIND = "lowrank.svd"
_SUPPORTED = ("Linear", "Embedding")


@method_config
class SvdLowrank(GateOptions):
    """Truncated SVD of Linear / Embedding weights into two thin factors (optionally data-aware, gated).

    Exactly one of: ``rank`` (the same rank for every layer), ``ratio`` (each layer keeps this
    fraction of its parameters), ``energy`` (each layer keeps this fraction of its squared
    singular values) or ``budget`` (the targets together keep this fraction of their
    parameters; ranks allocated by singular-value energy per parameter). ``data_aware``
    whitens Linear inputs by their Gram matrix over ``calib_batches`` calibration batches
    (ASVD / SVD-LLM), damped by ``damping`` x its mean diagonal; embeddings use plain SVD.
    """

    kind = KIND
    stage = "shrink"

    rank: int | None = None
    ratio: float | None = None
    energy: float | None = None
    budget: float | None = None
    data_aware: bool = False
    calib_batches: int = 8
    damping: float = 0.01

    def validate(self) -> None:
        super().validate()
        chosen = [k for k in ("rank", "ratio", "energy", "budget") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ConfigError(f"set exactly one of rank, ratio, energy, budget; got {chosen or 'none'}",
                              key="rank" if not chosen else chosen[-1])
        r, q, e, b = self.rank, self.ratio, self.energy, self.budget
        self._require(r is None or r >= 1, "rank", "an int >= 1", r)
        self._require(q is None or 0 < q < 1, "ratio", "a float in (0, 1)", q)
        self._require(e is None or 0 < e <= 1, "energy", "a float in (0, 1]", e)
        self._require(b is None or 0 < b < 1, "budget", "a float in (0, 1)", b)
        self._require(self.calib_batches >= 1, "calib_batches", "an int >= 1", self.calib_batches)
        self._require(self.damping >= 0, "damping", "a float >= 0", self.damping)


# -- replacement modules -----------------------------------------------------------------------
def factored_linear(in_f: int, out_f: int, rank: int, bias: bool, like: torch.Tensor) -> nn.Sequential:
    """Empty ``Linear(in, r, bias=False) -> Linear(r, out, bias)`` on ``like``'s dtype and device."""
    kw = {"dtype": like.dtype, "device": like.device}
    return nn.Sequential(nn.Linear(in_f, rank, bias=False, **kw), nn.Linear(rank, out_f, bias=bias, **kw))


def factored_embedding(num: int, dim: int, rank: int, padding_idx: int | None, like: torch.Tensor) -> nn.Sequential:
    """Empty ``Embedding(V, r) -> Linear(r, H, bias=False)`` on ``like``'s dtype and device."""
    kw = {"dtype": like.dtype, "device": like.device}
    return nn.Sequential(nn.Embedding(num, rank, padding_idx=padding_idx, **kw),
                         nn.Linear(rank, dim, bias=False, **kw))


def _matrix(module: nn.Module) -> tuple[int, int]:
    """``(rows, cols)`` of the matrix that is factorized: ``[out, in]`` or an embedding's ``[V, H]``."""
    w = module.weight
    return int(w.shape[0]), int(w.shape[1])


def _build(module: nn.Module, rank: int, chol: torch.Tensor | None,
           svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> nn.Sequential:
    """The filled replacement of ``module`` at ``rank`` (``chol``: data-aware whitener, Linear only;
    ``svd``: the layer's :func:`decompose` result when the rank rule computed it already)."""
    if svd is None:
        a, b = factorize(module.weight, rank, chol)  # [rows, r], [r, cols]
    else:
        a, b = truncate(svd, rank, chol, module.weight.dtype)
    if isinstance(module, nn.Embedding):
        new = factored_embedding(module.num_embeddings, module.embedding_dim, rank, module.padding_idx, module.weight)
        new[0].weight.data.copy_(a)  # [V, r]
        new[1].weight.data.copy_(b.T)  # [H, r]
    else:
        new = factored_linear(module.in_features, module.out_features, rank, module.bias is not None, module.weight)
        new[0].weight.data.copy_(b)  # [r, in]
        new[1].weight.data.copy_(a)  # [out, r]
        if module.bias is not None:
            new[1].bias.data.copy_(module.bias.detach())
    return new.train(module.training)


# -- selection, statistics, ranks -------------------------------------------------------------
def select_layers(model: nn.Module, targets: Targets) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The plain Linear / Embedding layers ``targets`` selects, and what else it selected that has a weight.

    A Conv layer picked up by a broad pattern is skipped (and reported); a selection with no
    Linear or Embedding, or ``types`` naming only other layers, is a :class:`MethodError`.
    """
    layers: list[tuple[str, nn.Module]] = []
    skipped: dict[str, str] = {}
    for name, module in targets.select(model):
        if type(module) in (nn.Linear, nn.Embedding) and name:
            layers.append((name, module))
        elif isinstance(module, nn.modules.conv._ConvNd):
            skipped[name] = f"{type(module).__name__}: SVD factorizes matrices; use lowrank.tucker or lowrank.cp"
        elif isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2 and name:
            skipped[name] = f"{type(module).__name__} is not a plain Linear or Embedding"
    other = [t for t in targets.types if t not in _SUPPORTED]
    if not layers:
        what = f"types {list(targets.types)}" if targets.types else "the targets"
        hint = " (Conv layers: use lowrank.tucker or lowrank.cp)" if skipped or other else ""
        raise MethodError(f"{KIND} factorizes nn.Linear and nn.Embedding; {what} select none{hint}")
    return layers, skipped


def input_grams(model: nn.Module, names: list[str], ctx: Context, batches: int) -> dict[str, torch.Tensor]:
    """``X^T X`` ([in, in], float64) of each named Linear's inputs over ``batches`` calibration batches."""
    data = ctx.need("calib_data", f"{KIND} with data_aware: true")
    grams: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], *, _name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)  # [N, in]
            g = x.T @ x  # [in, in]
            grams[_name] = grams[_name] + g if _name in grams else g

        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    chosen = [b for _, b in zip(range(batches), data)]
    forward_batches(model, chosen, hooks)
    missing = [n for n in names if n not in grams]
    if missing:
        raise MethodError(f"{KIND}: the calibration batches never reach {missing[:3]}; "
                          "exclude those layers or set data_aware: false")
    return grams


def choose_ranks(config: SvdLowrank, layers: list[tuple[str, nn.Module]], chols: dict[str, torch.Tensor],
                 svds: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, int | None]:
    """Each layer's rank from the one rank option set (spectra of ``W L`` when data-aware).

    ``energy`` and ``budget`` need every layer's spectrum: the full SVDs are computed here
    and left in ``svds`` for the factors. ``None``: the budget keeps the layer dense.
    """
    dims = {name: _matrix(m) for name, m in layers}
    if config.rank is not None:
        return {n: min(config.rank, *d) for n, d in dims.items()}
    if config.ratio is not None:
        return {n: rank_for_ratio(*d, config.ratio) for n, d in dims.items()}
    svds.update({n: decompose(m.weight, chols.get(n)) for n, m in layers})
    if config.energy is not None:
        return {n: rank_for_energy(svds[n][1], config.energy) for n in svds}
    assert config.budget is not None
    return allocate_budget({n: (svds[n][1], *dims[n]) for n in svds}, config.budget)


# -- the method ---------------------------------------------------------------------------------
@register_method(SvdLowrank)
def svd_lowrank(model: nn.Module, config: SvdLowrank, targets: Targets, ctx: Context) -> Record:
    """Factorize, gate and swap each selected layer; the record keeps the kept layers' ranks."""
    layers, skipped = select_layers(model, targets)
    linear_names = [n for n, m in layers if isinstance(m, nn.Linear)]
    chols: dict[str, torch.Tensor] = {}
    if config.data_aware and linear_names:
        grams = input_grams(model, linear_names, ctx, config.calib_batches)
        chols = {n: whitener(g, config.damping) for n, g in grams.items()}
    svds: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    ranks = choose_ranks(config, layers, chols, svds)
    inputs = capture_inputs(model, [n for n, _ in layers], ctx, KIND) if config.gate == "latency" else {}
    kept: dict[str, dict[str, Any]] = {}
    decisions = []
    params_before = params_after = 0
    with Progress(len(layers), KIND, enabled=ctx.progress, unit="layer") as bar:
        for name, module in layers:
            bar.update(1)
            rows, cols = _matrix(module)
            rank = ranks[name]
            dense_params = n_params(module)
            params_before += dense_params
            if rank is None:
                skipped[name] = "budget: kept dense (its last singular directions are worth more than the " \
                                "parameters a factorization near the break-even rank would save)"
                params_after += dense_params
                continue
            if rank > break_even_rank(rows, cols):
                skipped[name] = (f"rank {rank} would not reduce parameters (break-even rank "
                                 f"{break_even_rank(rows, cols)} for {rows}x{cols})")
                params_after += dense_params
                continue
            candidate = _build(module, rank, chols.get(name), svds.pop(name, None))
            decision = decide(name, module, candidate, inputs.get(name), config)
            decisions.append(decision)
            if decision.kept != "factorized":
                params_after += dense_params
                continue
            swap_module(model, name, candidate)
            params_after += n_params(candidate)
            kept[name] = _describe(module, rank, whitened=name in chols)
    data = {"layers": kept, "skipped": skipped, "gate": [d.to_dict() for d in decisions]}
    summary = {**summarize(decisions), "layers_skipped": len(skipped), "params_targets_before": params_before,
               "params_targets_after": params_after,
               "params_kept_fraction": round(params_after / max(params_before, 1), 4)}
    return Record(kind=KIND, data=data, summary=summary)


def _describe(module: nn.Module, rank: int, *, whitened: bool) -> dict[str, Any]:
    """What replay needs to rebuild one kept layer (plus whether it was whitened, for reports)."""
    if isinstance(module, nn.Embedding):
        return {"module": "embedding", "num": module.num_embeddings, "dim": module.embedding_dim, "rank": rank,
                "padding_idx": module.padding_idx}
    return {"module": "linear", "in": module.in_features, "out": module.out_features, "rank": rank,
            "bias": module.bias is not None, "whitened": whitened}


@register_replay(SvdLowrank)
def replay_svd(model: nn.Module, record: Record) -> None:
    """Rebuild exactly the layers the record kept factorized (empty; weights load afterwards)."""
    layers = record.data["layers"]
    if not isinstance(layers, dict):
        raise ValueError("'layers' must map layer names to their factorization")
    for name, info in layers.items():
        module = model.get_submodule(name)
        kind = info["module"]
        rank = info["rank"]
        if kind == "linear" and type(module) is nn.Linear:
            dims = (info["in"], info["out"])
            if dims != (module.in_features, module.out_features):
                raise ValueError(f"{name}: record says Linear{dims}, the model has "
                                 f"Linear({module.in_features}, {module.out_features})")
            _check_rank(name, rank, dims)
            new = factored_linear(*dims, rank, module.bias is not None, module.weight)
        elif kind == "embedding" and type(module) is nn.Embedding:
            dims = (info["num"], info["dim"])
            if dims != (module.num_embeddings, module.embedding_dim):
                raise ValueError(f"{name}: record says Embedding{dims}, the model has "
                                 f"Embedding({module.num_embeddings}, {module.embedding_dim})")
            _check_rank(name, rank, dims)
            new = factored_embedding(*dims, rank, module.padding_idx, module.weight)
        else:
            raise ValueError(f"{name}: record says {kind!r}, the model has {type(module).__name__}")
        swap_module(model, name, new.train(module.training))


def _check_rank(name: str, rank: Any, dims: tuple[int, int]) -> None:
    if type(rank) is not int or not 1 <= rank <= min(dims):
        raise ValueError(f"{name}: rank {rank!r} is not an int in [1, {min(dims)}]")


__all__ = ["SvdLowrank", "factored_embedding", "factored_linear", "select_layers", "svd_lowrank"]
