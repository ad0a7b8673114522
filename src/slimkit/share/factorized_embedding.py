"""``share.factorized_embedding``: ALBERT's factorized embedding, initialised from the table's SVD.

ALBERT (Lan et al. 2020) decouples the vocabulary embedding size ``E`` from the hidden size
``H``: a ``V x E`` table followed by an ``E x H`` projection shared by every token, so the
parameters drop from ``V * H`` to ``V * E + E * H`` (MiniLM at ``E = 32``: 11.7 M -> 0.99 M,
11.9x). Here the two factors start from the truncated SVD of the trained table,
``W ~ (U_E sqrt(S_E)) (sqrt(S_E) V_E^T)``, the best rank-``E`` approximation in Frobenius
norm (Eckart-Young), and distillation (``distill.embedding``) then recovers the rest.

A lookup is a gather of ``E``-wide rows and one ``[tokens, E] x [E, H]`` matmul (``E * H``
MACs per token). ``gate: params`` / ``gate: latency`` decide per table as in
:mod:`slimkit.lowrank.gate`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from ..lowrank.gate import GateOptions, capture_inputs, decide, n_params, summarize


def truncated_svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [V, rank], B [rank, H])`` with ``A @ B`` the best rank-``rank`` approximation of ``weight [V, H]``.

    The singular values are split evenly (``sqrt(S)`` on each side) so both factors have the
    same scale; a zero row of ``weight`` stays a zero row of ``A``. Computed in float64.
    """
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)  # [V, k], [k], [k, H]
    root = s[:rank].sqrt()
    a = u[:, :rank] * root  # [V, rank]
    b = root[:, None] * vh[:rank]  # [rank, H]
    return a.to(weight.dtype), b.to(weight.dtype)


class FactorizedEmbedding(nn.Module):
    """``project(embed(ids))``: an ``nn.Embedding(V, E)`` then ``nn.Linear(E, H, bias=False)``.

    ``meta``: ``num_embeddings`` (V), ``embedding_dim`` (H, what callers get), ``dim`` (E),
    ``padding_idx``. As in ``nn.Embedding``, the padding row of the small table gets no
    gradient.
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
        self.num_embeddings, self.embedding_dim, self.dim, self.padding_idx = v, h, e, pad
        self.meta = {"num_embeddings": v, "embedding_dim": h, "dim": e, "padding_idx": pad}
        self.embed = nn.Embedding(v, e, padding_idx=pad)  # [V, E]
        self.project = nn.Linear(e, h, bias=False)  # weight [H, E]

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, dim: int) -> FactorizedEmbedding:
        """Factors of ``emb.weight [V, H]`` at rank ``dim`` (truncated SVD)."""
        w = emb.weight.detach()
        a, b = truncated_svd_factors(w, dim)  # [V, E], [E, H]
        layer = cls({"num_embeddings": emb.num_embeddings, "embedding_dim": emb.embedding_dim, "dim": dim,
                     "padding_idx": emb.padding_idx})
        with torch.no_grad():
            layer.embed.weight.copy_(a)
            layer.project.weight.copy_(b.t())
        return layer.to(device=w.device, dtype=w.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.embed(ids))  # [..., E] -> [..., H]

    def dense_weight(self) -> torch.Tensor:
        """The ``[V, H]`` table the factors represent (inspection and tests)."""
        return self.embed.weight @ self.project.weight.t()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.dim} x {self.embedding_dim}, padding_idx={self.padding_idx}"


@method_config
class FactorizedEmbeddingShare(GateOptions):
    """ALBERT factorized embedding: a V x E table and a shared E x H projection, from the table's truncated SVD.

    ``dim`` is E (it must be below the table's width H). Targets: ``nn.Embedding`` tables
    (by default every one; name them, e.g. ``*word_embeddings``, to leave small position
    tables alone).
    """

    kind = "share.factorized_embedding"
    stage = "shrink"

    dim: int = 128

    def validate(self) -> None:
        super().validate()
        self._require(self.dim >= 1, "dim", "an int >= 1", self.dim)


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
    inputs = capture_inputs(model, [n for n, _ in found], ctx, config.kind) if config.gate == "latency" else {}
    layers: dict[str, dict[str, Any]] = {}
    decisions = []
    before = after = 0
    for name, emb in found:
        candidate = FactorizedEmbedding.from_embedding(emb, config.dim)
        decision = decide(name, emb, candidate, inputs.get(name), config)
        decisions.append(decision)
        before += n_params(emb)
        if decision.kept == "factorized":
            swap_module(model, name, candidate)
            layers[name] = dict(candidate.meta)
            after += n_params(candidate)
        else:
            after += n_params(emb)
    summary = {**summarize(decisions), "params_before": before, "params_after": after,
               "compression": round(before / max(after, 1), 4)}
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


__all__ = ["FactorizedEmbedding", "FactorizedEmbeddingShare", "truncated_svd_factors"]
