"""Tensor-train layers: a Linear whose weight is a TT-matrix, and a TT-embedding table.

Both hold the cores ``G_k [r_{k-1}, v_k, h_k, r_k]`` of :mod:`.tt_math` as parameters
``cores.0 .. cores.{d-1}`` and never form the dense matrix in ``forward``:

- :class:`TtLinear` contracts the input with one core at a time (:func:`tt_matmul`), so
  its MACs are those of the small contractions, not ``in * out``;
- :class:`TtEmbedding` reconstructs only the looked-up rows (:func:`tt_rows`): per core
  it gathers the slice of each id's digit and chains them with batched matmuls.

The layers are built empty from their structure (what ``restore`` does from a record's
data) and filled by :meth:`from_linear` / :meth:`from_embedding` (TT-SVD of the weight).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .tt_math import tt_full, tt_matmul, tt_rows, tt_svd


def _check_structure(meta: dict[str, Any], rows: int, cols: int, where: str) -> tuple[list[int], list[int], list[int]]:
    """Factors and ranks from ``meta``, validated (a record read from disk is untrusted)."""
    rf, cf, ranks = meta.get("row_factors"), meta.get("col_factors"), meta.get("ranks")
    for key, value in (("row_factors", rf), ("col_factors", cf), ("ranks", ranks)):
        if not isinstance(value, list) or not all(type(v) is int and v >= 1 for v in value):
            raise ValueError(f"{where}: {key} must be a list of positive ints, got {value!r}")
    assert isinstance(rf, list) and isinstance(cf, list) and isinstance(ranks, list)
    if len(rf) != len(cf) or len(rf) < 2 or len(ranks) != len(rf) - 1:
        raise ValueError(f"{where}: {len(rf)} row factors, {len(cf)} column factors and {len(ranks)} ranks do not fit")
    if math.prod(rf) < rows or math.prod(cf) < cols:
        raise ValueError(f"{where}: factors {rf} x {cf} do not cover a {rows} x {cols} matrix")
    return rf, cf, ranks


def _empty_cores(rf: list[int], cf: list[int], ranks: list[int]) -> nn.ParameterList:
    r = [1, *ranks, 1]
    return nn.ParameterList([nn.Parameter(torch.zeros(r[k], v, h, r[k + 1]))
                             for k, (v, h) in enumerate(zip(rf, cf))])


class TtLinear(nn.Module):
    """``y = x W^T + b`` with ``W^T [in, out]`` stored as a TT-matrix (rows: inputs, columns: outputs).

    ``meta``: ``in_features``, ``out_features``, ``bias`` (bool), ``row_factors`` (``prod >=
    in``), ``col_factors`` (``prod >= out``), ``ranks`` (the d - 1 internal ranks).
    """

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        self.in_features, self.out_features = int(meta["in_features"]), int(meta["out_features"])
        rf, cf, ranks = _check_structure(meta, self.in_features, self.out_features, "TtLinear")
        self.row_factors, self.col_factors, self.ranks = rf, cf, ranks
        self.meta = {"type": "linear", "in_features": self.in_features, "out_features": self.out_features,
                     "bias": bool(meta["bias"]), "row_factors": rf, "col_factors": cf, "ranks": ranks}
        self.cores = _empty_cores(rf, cf, ranks)
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if meta["bias"] else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, row_factors: list[int], col_factors: list[int],
                    ranks: list[int]) -> TtLinear:
        """TT-SVD of ``linear.weight.T`` at ``ranks`` (capped at the full ranks)."""
        w = linear.weight.detach()  # [out, in]
        cores = tt_svd(w.t().float(), row_factors, col_factors, ranks)
        meta = {"in_features": linear.in_features, "out_features": linear.out_features,
                "bias": linear.bias is not None, "row_factors": list(row_factors), "col_factors": list(col_factors),
                "ranks": [c.shape[-1] for c in cores[:-1]]}
        layer = cls(meta)
        with torch.no_grad():
            for p, c in zip(layer.cores, cores):
                p.copy_(c)
            if linear.bias is not None:
                assert layer.bias is not None
                layer.bias.copy_(linear.bias.detach())
        return layer.to(device=w.device, dtype=w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)  # [N, in]
        padded = math.prod(self.row_factors)
        if padded > self.in_features:
            flat = nn.functional.pad(flat, (0, padded - self.in_features))  # [N, prod v]
        y = tt_matmul(flat, list(self.cores))[:, : self.out_features]  # [N, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def dense_weight(self) -> torch.Tensor:
        """The ``[out, in]`` weight the cores represent (inspection and tests; not used by forward)."""
        return tt_full(list(self.cores))[: self.in_features, : self.out_features].t()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rows={self.row_factors}, "
                f"cols={self.col_factors}, ranks={self.ranks}, bias={self.bias is not None}")


class TtEmbedding(nn.Module):
    """An embedding table ``[V, H]`` stored as a TT-matrix; a lookup rebuilds only its rows.

    ``meta``: ``num_embeddings``, ``embedding_dim``, ``padding_idx`` (int or None),
    ``row_factors``, ``col_factors``, ``ranks``. The padding row is kept exactly in the
    buffer ``pad_row`` (zero in most models) and, as in ``nn.Embedding``, never trained.
    """

    pad_row: torch.Tensor

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(meta["num_embeddings"]), int(meta["embedding_dim"])
        pad = meta.get("padding_idx")
        if pad is not None and (type(pad) is not int or not 0 <= pad < self.num_embeddings):
            raise ValueError(f"TtEmbedding: padding_idx {pad!r} is not a row of {self.num_embeddings}")
        self.padding_idx = pad
        rf, cf, ranks = _check_structure(meta, self.num_embeddings, self.embedding_dim, "TtEmbedding")
        self.row_factors, self.col_factors, self.ranks = rf, cf, ranks
        self.meta = {"type": "embedding", "num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                     "padding_idx": pad, "row_factors": rf, "col_factors": cf, "ranks": ranks}
        self.cores = _empty_cores(rf, cf, ranks)
        if pad is not None:
            self.register_buffer("pad_row", torch.zeros(self.embedding_dim))  # [H]

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, row_factors: list[int], col_factors: list[int],
                       ranks: list[int]) -> TtEmbedding:
        """TT-SVD of ``emb.weight [V, H]`` at ``ranks`` (capped at the full ranks)."""
        w = emb.weight.detach()  # [V, H]
        cores = tt_svd(w.float(), row_factors, col_factors, ranks)
        meta = {"num_embeddings": emb.num_embeddings, "embedding_dim": emb.embedding_dim,
                "padding_idx": emb.padding_idx, "row_factors": list(row_factors), "col_factors": list(col_factors),
                "ranks": [c.shape[-1] for c in cores[:-1]]}
        layer = cls(meta)
        with torch.no_grad():
            for p, c in zip(layer.cores, cores):
                p.copy_(c)
            if emb.padding_idx is not None:
                layer.pad_row.copy_(w[emb.padding_idx])
        return layer.to(device=w.device, dtype=w.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)  # [N]
        rows = tt_rows(list(self.cores), flat, self.row_factors)[:, : self.embedding_dim]  # [N, H]
        if self.padding_idx is not None:
            rows = torch.where((flat == self.padding_idx)[:, None], self.pad_row.to(rows.dtype), rows)
        return rows.reshape(*ids.shape, self.embedding_dim)

    def dense_weight(self) -> torch.Tensor:
        """The whole ``[V, H]`` table (inspection and tests; ``forward`` never builds it)."""
        w = tt_full(list(self.cores))[: self.num_embeddings, : self.embedding_dim].clone()
        if self.padding_idx is not None:
            w[self.padding_idx] = self.pad_row
        return w

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, rows={self.row_factors}, cols={self.col_factors}, "
                f"ranks={self.ranks}, padding_idx={self.padding_idx}")


__all__ = ["TtEmbedding", "TtLinear"]
