"""``share.factorized_embedding``: ALBERT's factorized embedding, initialised from the table's SVD.

ALBERT (Lan et al. 2020) decouples the vocabulary embedding size ``E`` from the hidden size
``H``: a ``V x E`` table followed by an ``E x H`` projection shared by every token, so the
parameters drop from ``V * H`` to ``V * E + E * H`` (MiniLM at ``E = 32``: 11.7 M -> 0.99 M,
11.9x). Here the two factors start from the SVD of the trained table: ``W ~ (W B^T) B``
with ``B`` the top-``E`` right singular vectors, either of ``W`` itself (``init: svd``, the
best rank-``E`` approximation, Eckart-Young) or of ``W`` with each row weighted by how often
the task's data looks it up (``init: frequency``): on MiniLM at ``E = 32`` STS-B dev before
any training is 80.8 with frequency weights against 71.3 with the plain SVD (fp32 86.7).
Distillation (``distill.embedding``) then recovers the rest.

``exact_rows: K`` adds a frequency-aware correction in the spirit of GroupReduce (Chen et
al. 2018, which spends more rank on frequent words): the ``K`` rows the data looks up most
keep their exact trained vector through a ``[K + 1, H]`` residual table (``W_i - A_i B``;
the extra row is a frozen zero for every other token), found by an int32 ``slot`` buffer
``[V]``. Word frequencies are Zipfian, so a few hundred rows cover most running tokens:
the common words cost nothing in quality and the low rank serves the long tail.

A lookup is a gather of ``E``-wide rows and one ``[tokens, E] x [E, H]`` matmul (``E * H``
MACs per token). ``gate: params`` / ``gate: latency`` decide per table as in
:mod:`slimkit.lowrank.gate`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..core.context import call_model, forward_batches
from ..core.modules import swap_module
from ..lowrank.gate import GateOptions, gate_and_swap, n_params, summarize


def svd_factors(weight: torch.Tensor, rank: int,
                row_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [V, rank], B [rank, H])`` minimising ``sum_i w_i ||W_i - A_i B||^2`` for ``weight [V, H]``.

    ``B`` is the top-``rank`` right singular vectors of ``diag(sqrt(w)) W`` (orthonormal
    rows) and ``A = W B^T`` projects every row onto them; that is the exact optimum of the
    row-weighted problem. Uniform weights (``None``) give the truncated SVD, the best
    rank-``rank`` approximation (Eckart-Young); token-frequency weights spend the rank on
    the rows a corpus actually looks up. A zero row of ``W`` stays zero. Computed in float64.
    """
    w = weight.detach().to(torch.float64)  # [V, H]
    scaled = w if row_weights is None else w * row_weights.detach().to(torch.float64).clamp_min(0).sqrt()[:, None]
    _, _, vh = torch.linalg.svd(scaled, full_matrices=False)  # vh [k, H]
    b = vh[:rank]  # [rank, H]
    a = w @ b.t()  # [V, rank]
    return a.to(weight.dtype), b.to(weight.dtype)


class FactorizedEmbedding(nn.Module):
    """``project(embed(ids))``: an ``nn.Embedding(V, E)`` then ``nn.Linear(E, H, bias=False)``.

    ``meta``: ``num_embeddings`` (V), ``embedding_dim`` (H, what callers get), ``dim`` (E),
    ``padding_idx``, optionally ``exact_rows`` (K > 0: a residual ``nn.Embedding(K + 1, H)``
    whose last row is its padding row, so it stays zero, and an int32 ``slot`` buffer
    ``[V]`` mapping each token to its residual row or to that zero row). As in
    ``nn.Embedding``, the padding row of the small table gets no gradient.
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        v, h, e, pad = meta.get("num_embeddings"), meta.get("embedding_dim"), meta.get("dim"), meta.get("padding_idx")
        for key, value in (("num_embeddings", v), ("embedding_dim", h), ("dim", e)):
            if type(value) is not int or value < 1:
                raise ValueError(f"FactorizedEmbedding: {key} must be a positive int, got {value!r}")
        assert isinstance(v, int) and isinstance(h, int) and isinstance(e, int)
        if pad is not None and (type(pad) is not int or not 0 <= pad < v):
            raise ValueError(f"FactorizedEmbedding: padding_idx {pad!r} is not a row of {v}")
        k = meta.get("exact_rows", 0)
        if type(k) is not int or not 0 <= k <= v:
            raise ValueError(f"FactorizedEmbedding: exact_rows must be an int in [0, {v}], got {k!r}")
        self.num_embeddings, self.embedding_dim, self.dim, self.padding_idx = v, h, e, pad
        self.exact_rows = k
        self.meta = {"num_embeddings": v, "embedding_dim": h, "dim": e, "padding_idx": pad}
        if k:
            self.meta["exact_rows"] = k
        self.embed = nn.Embedding(v, e, padding_idx=pad)  # [V, E]
        self.project = nn.Linear(e, h, bias=False)  # weight [H, E]
        self.exact: nn.Embedding | None = None
        if k:
            self.exact = nn.Embedding(k + 1, h, padding_idx=k)  # [K + 1, H], row K = 0
            self.register_buffer("slot", torch.full((v,), k, dtype=torch.int32))  # [V] -> 0..K

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, dim: int, row_weights: torch.Tensor | None = None,
                       exact_rows: int = 0) -> FactorizedEmbedding:
        """Factors of ``emb.weight [V, H]`` at rank ``dim`` (:func:`svd_factors`, optionally row-weighted).

        ``exact_rows`` (K) keeps the K rows with the largest ``row_weights`` (ties to the lower
        id, never the padding row) exact through the residual table; it needs ``row_weights``.
        """
        if exact_rows and row_weights is None:
            raise ValueError("FactorizedEmbedding: exact_rows needs row_weights (token counts) to rank rows")
        w = emb.weight.detach()
        a, b = svd_factors(w, dim, row_weights)  # [V, E], [E, H]
        layer = cls({"num_embeddings": emb.num_embeddings, "embedding_dim": emb.embedding_dim, "dim": dim,
                     "padding_idx": emb.padding_idx, "exact_rows": exact_rows})
        with torch.no_grad():
            layer.embed.weight.copy_(a)
            layer.project.weight.copy_(b.t())
            if exact_rows and layer.exact is not None and row_weights is not None:
                rows = top_rows(row_weights, exact_rows, emb.padding_idx)  # [K]
                layer.slot[rows] = torch.arange(exact_rows, dtype=torch.int32)
                layer.exact.weight[:exact_rows] = w[rows] - a[rows] @ b  # [K, H] residual: exact W_i
                layer.exact.weight[exact_rows] = 0
        return layer.to(device=w.device, dtype=w.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.project(self.embed(ids))  # [..., E] -> [..., H]
        if self.exact is not None:
            out = out + self.exact(self.slot[ids].long())  # [..., H]; zero for the low-rank tail
        return out

    def dense_weight(self) -> torch.Tensor:
        """The ``[V, H]`` table the factors represent (inspection and tests)."""
        w = self.embed.weight @ self.project.weight.t()
        if self.exact is not None:
            w = w + self.exact.weight[self.slot.long()]
        return w

    def extra_repr(self) -> str:
        exact = f", exact_rows={self.exact_rows}" if self.exact_rows else ""
        return f"{self.num_embeddings} x {self.dim} x {self.embedding_dim}, padding_idx={self.padding_idx}{exact}"


def refit_codes(targets: torch.Tensor, project: torch.Tensor, how: str = "pinv",
                fit_targets: torch.Tensor | None = None, fit_codes: torch.Tensor | None = None) -> torch.Tensor:
    """New small-table rows ``[n, E]`` for dense rows ``targets [n, H]``.

    Why: distillation only updates the rows its corpus looks up, but it moves the shared
    projection, so a row the corpus never saw keeps a code fitted to the *old* projection.
    ``pinv`` re-solves ``min ||a @ project.T - w||`` against the current projection
    (``project`` is the Linear weight ``[H, E]``); ``map`` instead fits one linear map
    ``W -> A`` on the trained rows (``fit_targets [s, H]``, ``fit_codes [s, E]``) and applies it,
    carrying over whatever systematic shift training gave the seen rows.
    """
    t = targets.detach().to(torch.float64)  # [n, H]
    if how == "pinv":
        p = project.detach().to(torch.float64)  # [H, E]
        return torch.linalg.lstsq(p, t.t()).solution.t().to(targets.dtype)  # [n, E]
    if how == "map":
        if fit_targets is None or fit_codes is None or fit_targets.shape[0] < fit_targets.shape[1]:
            raise ValueError("refit_codes(how='map') needs at least H fitted rows (fit_targets, fit_codes)")
        m = torch.linalg.lstsq(fit_targets.detach().to(torch.float64),
                               fit_codes.detach().to(torch.float64)).solution  # [H, E]
        return (t @ m).to(targets.dtype)  # [n, E]
    raise ValueError(f"refit_codes: how must be 'pinv' or 'map', got {how!r}")


def refit_unseen_rows(layer: FactorizedEmbedding, dense: torch.Tensor, seen: torch.Tensor,
                      how: str = "pinv") -> int:
    """Re-fit, in place, the codes of the rows ``seen`` (bool ``[V]``) marks False; returns how many.

    ``dense`` is the original ``[V, H]`` table (the teacher's). Rows with an exact residual
    and the padding row are left alone. Use after a recovery run whose data did not cover
    the vocabulary (see docs/sharing.md).
    """
    if dense.shape != (layer.num_embeddings, layer.embedding_dim) or seen.shape != (layer.num_embeddings,):
        raise ValueError(f"refit_unseen_rows: dense {tuple(dense.shape)} / seen {tuple(seen.shape)} do not "
                         f"match the {layer.num_embeddings} x {layer.embedding_dim} table")
    todo = ~seen.to(torch.bool)  # [V]
    if layer.exact is not None:
        todo &= layer.slot.long() == layer.exact_rows  # rows with a residual stay exact
    if layer.padding_idx is not None:
        todo[layer.padding_idx] = False
    idx = todo.nonzero().flatten()  # [n]
    if idx.numel() == 0:
        return 0
    fit = (~todo).nonzero().flatten()
    if layer.padding_idx is not None:
        fit = fit[fit != layer.padding_idx]
    codes = refit_codes(dense[idx], layer.project.weight, how, dense[fit], layer.embed.weight[fit])  # [n, E]
    with torch.no_grad():
        layer.embed.weight[idx] = codes.to(layer.embed.weight.dtype)
    return int(idx.numel())


def top_rows(row_weights: torch.Tensor, k: int, skip: int | None = None) -> torch.Tensor:
    """Indices of the ``k`` largest weights, ties towards the lower index (a stable sort); never ``skip``."""
    w = row_weights.detach().to(torch.float64).clone()  # [V]
    if skip is not None:
        w[skip] = -torch.inf  # the padding row keeps nn.Embedding's no-gradient rule
    return torch.argsort(-w, stable=True)[:k]  # [k]


@method_config
class FactorizedEmbeddingShare(GateOptions):
    """ALBERT factorized embedding: a V x E table and a shared E x H projection, from the table's truncated SVD.

    ``dim`` is E (it must be below the table's width H). ``init: svd`` is the truncated
    SVD; ``init: frequency`` weights each row by how often the table looks it up on the
    context's data (``data``: unlabelled or calibration batches, at most ``batches`` of
    them; counts + ``smoothing``), so the rank goes to the tokens the task uses. Targets:
    ``nn.Embedding`` tables (by default every one; name them, e.g. ``*word_embeddings``).
    ``exact_rows`` (K, needs ``init: frequency``) keeps the K most looked-up rows exact
    through a residual table (costs ``(K + 1) * H`` parameters and a ``[V]`` int32 buffer).
    """

    kind = "share.factorized_embedding"
    stage = "shrink"

    dim: int = 128
    init: Literal["svd", "frequency"] = "svd"
    data: Literal["auto", "unlabeled", "calib"] = "auto"
    batches: int | None = None
    smoothing: float = 1.0
    exact_rows: int = 0

    def validate(self) -> None:
        super().validate()
        self._require(self.dim >= 1, "dim", "an int >= 1", self.dim)
        self._require(self.exact_rows >= 0, "exact_rows", "an int >= 0", self.exact_rows)
        self._require(self.exact_rows == 0 or self.init == "frequency", "exact_rows",
                      "0 unless init is 'frequency' (the counts choose the rows)", self.exact_rows)
        self._require(self.batches is None or self.batches >= 1, "batches", "an int >= 1 or null", self.batches)
        self._require(self.smoothing > 0, "smoothing", "a float > 0", self.smoothing)


class _Seen(Exception):
    """Raised by the counting hooks once every table has seen the batch: the rest of the forward is skipped."""


def token_counts(model: nn.Module, names: Sequence[str], batches: Iterable[Any],
                 limit: int | None = None) -> dict[str, torch.Tensor]:
    """How often each row of each named embedding is looked up over ``batches`` (``[V]`` float64 each).

    The ids are those the tables really receive (forward pre-hooks), and each forward stops
    as soon as every table has seen its batch, so counting a corpus costs its tokenisation
    and the embedding layers, not the whole model.
    """
    tables = {n: model.get_submodule(n) for n in names}
    counts = {n: torch.zeros(t.num_embeddings, dtype=torch.float64) for n, t in tables.items()}  # type: ignore[arg-type]
    pending: set[str] = set()
    hooks = []
    for name, table in tables.items():
        def hook(_m: nn.Module, args: tuple[Any, ...], *, _name: str = name) -> None:
            ids = args[0].detach().reshape(-1).cpu()
            counts[_name] += torch.bincount(ids, minlength=counts[_name].numel()).to(torch.float64)
            pending.discard(_name)
            if not pending:
                raise _Seen

        hooks.append(table.register_forward_pre_hook(hook))

    def run(m: nn.Module, batch: Any) -> None:
        pending.update(tables)
        try:
            call_model(m, batch)
        except _Seen:
            pass

    def limited() -> Iterable[Any]:
        for i, batch in enumerate(batches):
            if limit is not None and i >= limit:
                return
            yield batch

    forward_batches(model, limited(), hooks, run=run)
    return counts


def _count_data(config: FactorizedEmbeddingShare, ctx: Context) -> Iterable[Any]:
    order = {"auto": ("unlabeled_data", "calib_data"), "unlabeled": ("unlabeled_data",),
             "calib": ("calib_data",)}[config.data]
    for attr in order:
        if getattr(ctx, attr) is not None:
            return getattr(ctx, attr)  # type: ignore[no-any-return]
    names = " or ".join(f"Context.{a}" for a in order)
    raise MethodError(f"{config.kind} with init: frequency (data: {config.data}) needs {names} to count tokens")


def embedding_targets(model: nn.Module, targets: Targets, kind: str) -> list[tuple[str, nn.Embedding]]:
    """The ``nn.Embedding`` modules the targets select (none is a MethodError naming what they select)."""
    found: list[tuple[str, nn.Embedding]] = []
    other: set[str] = set()
    for name, m in targets.iter(model):
        if isinstance(m, nn.Embedding):
            if m.max_norm is not None:
                raise MethodError(f"{kind}: {name} is an nn.Embedding with max_norm (it rewrites rows on lookup)")
            found.append((name, m))
        elif not list(m.children()):
            other.add(type(m).__name__)
    if not found:
        seen = f" (they select: {', '.join(sorted(other))})" if other else ""
        raise MethodError(f"{kind} factors nn.Embedding tables; the targets select none{seen}")
    return found


@register_method(FactorizedEmbeddingShare)
def factorize_embeddings(model: nn.Module, config: FactorizedEmbeddingShare, targets: Targets,
                         ctx: Context) -> Record:
    found = embedding_targets(model, targets, config.kind)
    for name, emb in found:
        if config.dim >= emb.embedding_dim:
            raise MethodError(f"{config.kind}: dim {config.dim} must be below {name}'s width {emb.embedding_dim} "
                              "(E < H, or nothing is saved)")
        if config.exact_rows > emb.num_embeddings:
            raise MethodError(f"{config.kind}: exact_rows {config.exact_rows} exceeds {name}'s "
                              f"{emb.num_embeddings} rows")
    counts: dict[str, torch.Tensor] = {}
    if config.init == "frequency":
        counts = token_counts(model, [n for n, _ in found], _count_data(config, ctx), config.batches)

    def build(_k: int, name: str, emb: nn.Module) -> nn.Module:
        weights = counts[name] + config.smoothing if name in counts else None
        return FactorizedEmbedding.from_embedding(emb, config.dim, weights, config.exact_rows)

    kept, decisions = gate_and_swap(model, found, build, ctx, config)
    layers = {name: dict(m.meta) for name, m in kept.items()}
    before = sum(n_params(m) for _, m in found)
    after = sum(n_params(kept[n]) if n in kept else n_params(m) for n, m in found)
    summary = {**summarize(decisions), "params_before": before, "params_after": after,
               "compression": round(before / max(after, 1), 4)}
    if counts:  # rows the counted data looked up, per table
        summary["rows_seen"] = {n: int((c > 0).sum()) for n, c in counts.items()}
    return Record(kind="", data={"layers": layers, "gate": [d.to_dict() for d in decisions]}, summary=summary)


@register_replay(FactorizedEmbeddingShare)
def replay_factorized(model: nn.Module, record: Record) -> None:
    """Swap in empty factorized embeddings of the recorded sizes (weights load afterwards, strictly)."""
    layers = record.data.get("layers")
    if not isinstance(layers, dict):
        raise ValueError("share.factorized_embedding record has no 'layers' mapping")
    for name, meta in layers.items():
        if not isinstance(meta, dict):
            raise ValueError(f"share.factorized_embedding: layer {name!r} has no structure")
        current = model.get_submodule(name)
        if not isinstance(current, nn.Embedding):
            raise ValueError(f"share.factorized_embedding: {name} is a {type(current).__name__}, not an nn.Embedding")
        new = FactorizedEmbedding(meta)
        if (current.num_embeddings, current.embedding_dim) != (new.num_embeddings, new.embedding_dim):
            raise ValueError(f"share.factorized_embedding: {name} is {current.num_embeddings} x "
                             f"{current.embedding_dim} in the model but {new.num_embeddings} x "
                             f"{new.embedding_dim} in the record")
        swap_module(model, name, new.to(dtype=current.weight.dtype))


__all__ = ["FactorizedEmbedding", "FactorizedEmbeddingShare", "refit_codes", "refit_unseen_rows", "svd_factors",
           "token_counts", "top_rows"]
