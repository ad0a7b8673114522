"""``lowrank.tt``: tensor-train Linear layers and TT-embeddings, initialised by TT-SVD.

Each targeted ``nn.Linear`` / ``nn.Embedding`` becomes a :class:`~.tt_layers.TtLinear` /
:class:`~.tt_layers.TtEmbedding` whose cores come from the TT-SVD of its weight
(:mod:`.tt_math`). Dimensions are split into ``d`` factors automatically
(:func:`~.tt_math.factorize`, padding a dimension that does not factor evenly) or as given
by ``factors``; the internal TT ranks are ``ranks`` (one list for every layer) or
``max_rank`` each, capped at what the matrix allows.

Where it pays: a big embedding table (MiniLM's 30522 x 384 words are half its
parameters) shrinks ~10x at TT ranks near 64, and only looked-up rows are rebuilt; but a
*trained* table is fitted worse by TT-SVD than by a truncated SVD of the same size (see
docs/lowrank.md), so ``share.factorized_embedding`` is the better start there. A TT-Linear
of a transformer's size is rarely faster than the dense matmul on CPU (several small
contractions instead of one GEMM); ``gate: latency`` measures that per layer and keeps
the dense layer where it loses, ``gate: params`` keeps only the factorizations that shrink
the layer by ``gate_min_ratio``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from .gate import GateOptions, gate_and_swap, n_params, summarize
from .tt_layers import TtEmbedding, TtLinear
from .tt_math import factorize, resolve_ranks


@method_config
class TtLowrank(GateOptions):
    """Tensor-train factorization of Linear weights and embedding tables (TT-SVD init, rows rebuilt on lookup).

    ``d`` cores per layer; internal ranks ``ranks`` (d - 1 ints, used for every layer) or
    else ``max_rank`` for each. ``factors`` fixes the split ``[[v_1..v_d], [h_1..h_d]]``
    (rows: input features or vocabulary, columns: output features or embedding dim; their
    products must cover the layer); by default each dimension is factored evenly,
    padding it when it does not factor (e.g. 30522 -> 37 x 33 x 25 = 30525). Targets: exact
    ``nn.Linear`` and ``nn.Embedding`` modules.
    """

    kind = "lowrank.tt"
    stage = "shrink"

    d: int = 3
    max_rank: int = 16
    ranks: tuple[int, ...] | None = None
    factors: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def validate(self) -> None:
        super().validate()
        self._require(2 <= self.d <= 6, "d", "an int in [2, 6]", self.d)
        self._require(self.max_rank >= 1, "max_rank", "an int >= 1", self.max_rank)
        if self.ranks is not None:
            self._require(len(self.ranks) == self.d - 1 and all(r >= 1 for r in self.ranks), "ranks",
                          f"{self.d - 1} positive ints (d - 1)", self.ranks)
        if self.factors is not None:
            rows, cols = self.factors
            self._require(len(rows) == self.d and len(cols) == self.d and all(f >= 1 for f in (*rows, *cols)),
                          "factors", f"two lists of {self.d} positive ints (d)", self.factors)


def _dims(module: nn.Module) -> tuple[int, int]:
    """``(rows, cols)`` of the TT-matrix of ``module``: ``(in, out)`` or ``(V, H)``."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    assert isinstance(module, nn.Linear)
    return module.in_features, module.out_features


def _factors(config: TtLowrank, rows: int, cols: int, name: str) -> tuple[list[int], list[int]]:
    if config.factors is None:
        return list(factorize(rows, config.d)), list(factorize(cols, config.d))
    rf, cf = (list(f) for f in config.factors)
    prod_r = prod_c = 1
    for f in rf:
        prod_r *= f
    for f in cf:
        prod_c *= f
    if prod_r < rows or prod_c < cols:
        raise MethodError(f"lowrank.tt: factors {rf} x {cf} do not cover {name}'s {rows} x {cols} matrix "
                          f"(products {prod_r} x {prod_c}); leave `factors` unset to factor each layer")
    return rf, cf


def tt_targets(model: nn.Module, targets: Targets, kind: str) -> list[tuple[str, nn.Linear | nn.Embedding]]:
    """The exact ``nn.Linear`` / ``nn.Embedding`` modules the targets select; none is a MethodError.

    Subclasses are skipped on purpose (``MultiheadAttention``'s ``out_proj`` is read by its
    parent, not called, so replacing it would silently do nothing).
    """
    found: list[tuple[str, nn.Linear | nn.Embedding]] = []
    other: set[str] = set()
    for name, m in targets.iter(model):
        if type(m) in (nn.Linear, nn.Embedding):
            if isinstance(m, nn.Embedding) and m.max_norm is not None:
                raise MethodError(f"{kind}: {name} is an nn.Embedding with max_norm (it rewrites rows on lookup)")
            found.append((name, m))  # type: ignore[arg-type]
        elif not list(m.children()):
            other.add(type(m).__name__)
    if not found:
        seen = f" (they select: {', '.join(sorted(other))})" if other else ""
        raise MethodError(f"{kind} factors nn.Linear and nn.Embedding layers; the targets select none{seen}")
    return found


def build_tt(module: nn.Linear | nn.Embedding, config: TtLowrank, name: str) -> TtLinear | TtEmbedding:
    """The TT replacement of one layer at the config's factors and ranks."""
    rows, cols = _dims(module)
    rf, cf = _factors(config, rows, cols, name)
    ranks = resolve_ranks(rf, cf, config.ranks, config.max_rank)
    if isinstance(module, nn.Embedding):
        return TtEmbedding.from_embedding(module, rf, cf, ranks)
    return TtLinear.from_linear(module, rf, cf, ranks)


@register_method(TtLowrank)
def tt_lowrank(model: nn.Module, config: TtLowrank, targets: Targets, ctx: Context) -> Record:
    found = tt_targets(model, targets, config.kind)
    kept, decisions = gate_and_swap(model, found, lambda _k, name, m: build_tt(m, config, name), ctx, config)
    layers = {name: dict(m.meta) for name, m in kept.items()}
    before = sum(n_params(m) for _, m in found)
    after = sum(n_params(kept[n]) if n in kept else n_params(m) for n, m in found)
    summary = {**summarize(decisions), "params_before": before, "params_after": after,
               "compression": round(before / max(after, 1), 4)}
    return Record(kind="", data={"layers": layers, "gate": [d.to_dict() for d in decisions]}, summary=summary)


@register_replay(TtLowrank)
def replay_tt(model: nn.Module, record: Record) -> None:
    """Swap in empty TT layers of the recorded structure (the weights load afterwards, strictly)."""
    layers = record.data.get("layers")
    if not isinstance(layers, dict):
        raise ValueError("lowrank.tt record has no 'layers' mapping")
    for name, meta in layers.items():
        if not isinstance(meta, dict) or meta.get("type") not in ("linear", "embedding"):
            raise ValueError(f"lowrank.tt: layer {name!r} has no valid 'type'")
        current = model.get_submodule(name)
        if type(current) not in (nn.Linear, nn.Embedding):
            raise ValueError(f"lowrank.tt: {name} is a {type(current).__name__}, not the layer the record factored")
        new = TtLinear(meta) if meta["type"] == "linear" else TtEmbedding(meta)
        if _dims(current) != _dims_meta(meta):
            raise ValueError(f"lowrank.tt: {name} is {_dims(current)} in the model but {_dims_meta(meta)} in the record")
        swap_module(model, name, new.to(dtype=next(current.parameters()).dtype))


def _dims_meta(meta: dict[str, Any]) -> tuple[int, int]:
    if meta["type"] == "embedding":
        return int(meta["num_embeddings"]), int(meta["embedding_dim"])
    return int(meta["in_features"]), int(meta["out_features"])


__all__ = ["TtLowrank", "build_tt", "tt_targets"]
