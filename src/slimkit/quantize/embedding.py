"""Embedding-table quantisation (``quantize.embedding``): low-bit rows, dequantised on lookup.

An embedding is a lookup, not a matmul: each forward touches only the rows of the ids in
the batch. :class:`QuantEmbedding` therefore keeps the codes packed and dequantises just
the gathered rows, never the whole float table (30522 x 384 floats for MiniLM).

Modes:

- ``affine`` (8 or 4 bits): per-row symmetric codes ``w ~ code * scale[row]`` with
  ``code in [-qmax, qmax]`` (127 or 7), stored offset by ``qmax`` as unsigned; 4-bit codes
  are packed two per byte (:mod:`~slimkit.quantize.packing`, low nibble first). Rows are
  padded to whole bytes, so a row's codes are one contiguous slice a lookup can gather.
  A zero row (e.g. the padding row) stays exactly zero. With ``scale: mse`` each row's
  scale is instead the clipped one with the least squared error
  (:func:`~slimkit.quantize.affine.mse_row_scales`), on the full signed grid
  ``[-2**(bits-1), qmax]`` (16 levels at 4 bits, not 15): same bytes, a third less error.
- ``codebook`` (4 bits): one shared 16-entry codebook for the table, fitted by 1-D k-means
  over all its weights (:func:`~slimkit.quantize.nonuniform.kmeans_share`), codes packed
  as above. The padding row becomes its nearest centroids, not necessarily zero.

The target may be a plain ``nn.Embedding`` or a vocabulary-trimmed
:class:`~slimkit.prune.vocab.TrimmedEmbedding` (its ``remap`` is kept, its rows quantised).
"""
from __future__ import annotations

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
    register_replay,
)
from ..core.modules import swap_module
from ..prune.vocab import TrimmedEmbedding
from .affine import mse_row_scales
from .nonuniform import kmeans_share
from .packing import pack_bits


def row_bytes(dim: int, bits: int) -> int:
    """Bytes of one packed row of ``dim`` codes (a row always starts on a byte)."""
    return (dim * bits + 7) // 8


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes ``[R, H]`` -> uint8 ``[R, row_bytes(H, bits)]``, each row packed on its own."""
    r, h = codes.shape
    per_byte = 8 // bits
    pad = (-h) % per_byte
    padded = torch.cat([codes, codes.new_zeros(r, pad)], dim=1) if pad else codes  # [R, H + pad]
    return pack_bits(padded, bits).reshape(r, row_bytes(h, bits))


def unpack_rows(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows` for gathered rows: uint8 ``[..., B]`` -> int64 ``[..., dim]``."""
    if bits == 8:
        return packed.to(torch.int64)
    lo, hi = packed & 0x0F, packed >> 4  # pack_bits is LSB first: even codes in the low nibble
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1)[..., :dim].to(torch.int64)


class QuantEmbedding(nn.Module):
    """An embedding whose rows are stored as packed low-bit codes (see the module docstring).

    ``QuantEmbedding(meta)`` makes an empty one of the right shapes (what ``restore``
    loads the saved buffers into); :meth:`from_weight` fills one.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    codebook: torch.Tensor
    remap: torch.Tensor

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        self.meta = dict(meta)
        self.num_embeddings = meta["num_embeddings"]  # the id space callers index with
        self.embedding_dim = meta["dim"]
        self.padding_idx = meta["padding_idx"]
        rows, bits = meta["rows"], meta["bits"]
        self.register_buffer("codes", torch.zeros(rows, row_bytes(meta["dim"], bits), dtype=torch.uint8))
        if meta["mode"] == "affine":
            self.register_buffer("scale", torch.zeros(rows))  # [R]
        else:
            self.register_buffer("codebook", torch.zeros(2**bits))  # [K]
        if meta["trimmed"]:
            self.register_buffer("remap", torch.zeros(meta["num_embeddings"], dtype=torch.int32))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int, mode: str, *, padding_idx: int | None,
                    remap: torch.Tensor | None = None, scale: str = "absmax") -> QuantEmbedding:
        """Quantise ``weight [R, H]``; ``remap [V]`` (ids -> rows) when the table is trimmed."""
        w = weight.detach().float().cpu()  # [R, H]
        rows, dim = w.shape
        meta = {"num_embeddings": int(remap.numel()) if remap is not None else rows, "rows": rows, "dim": dim,
                "bits": bits, "mode": mode, "padding_idx": padding_idx, "trimmed": remap is not None}
        if mode == "affine":
            qmax = 2 ** (bits - 1) - 1
            if scale == "mse":
                qmin = -qmax - 1
                scales = mse_row_scales(w, qmin, qmax)  # [R]
            else:
                qmin = -qmax
                amax = w.abs().amax(dim=1)  # [R]
                scales = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
            codes = (torch.round(w / scales[:, None]).clamp(qmin, qmax) - qmin).to(torch.int64)  # [R, H]
            meta["qmin"] = qmin
        elif mode == "codebook":
            codebook, codes = kmeans_share(w, bits)  # [2**bits], [R, H]
        else:
            raise MethodError(f"unknown embedding quantisation mode {mode!r}")
        layer = cls(meta)
        with torch.no_grad():
            layer.codes.copy_(pack_rows(codes, bits))
            if mode == "affine":
                layer.scale.copy_(scales)
            else:
                layer.codebook.copy_(codebook)
            if remap is not None:
                layer.remap.copy_(remap)
        return layer.to(weight.device)

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Stored row of every id (the trim's remap, or the id itself)."""
        return self.remap[ids] if self.meta["trimmed"] else ids

    def lookup_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dequantised rows ``[..., H]`` for row indices ``[...]``; only these rows are unpacked."""
        codes = unpack_rows(self.codes[rows], self.meta["bits"], self.meta["dim"])  # [..., H]
        if self.meta["mode"] == "affine":
            return (codes + self.meta["qmin"]).to(self.scale.dtype) * self.scale[rows].unsqueeze(-1)
        return self.codebook[codes]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lookup_rows(self.rows_of(ids))  # [..., H]

    def dequantized(self) -> torch.Tensor:
        """The whole float table ``[R, H]`` (for inspection and tests, not used by forward)."""
        return self.lookup_rows(torch.arange(self.meta["rows"], device=self.codes.device))

    def extra_repr(self) -> str:
        m = self.meta
        return (f"{m['num_embeddings']} ids, rows={m['rows']}, dim={m['dim']}, bits={m['bits']}, "
                f"mode={m['mode']}, trimmed={m['trimmed']}")


@method_config
class EmbeddingQuant(MethodConfig):
    """Quantise embedding tables to 8/4-bit per-row codes or a shared 4-bit codebook, dequantised on lookup.

    Targets default to every ``nn.Embedding`` (and vocabulary-trimmed table) in the model.
    ``mode: codebook`` needs ``bits: 4`` (one 16-entry k-means codebook per table).
    ``scale: mse`` (affine only) picks each row's clipped scale with the least error.
    """

    kind = "quantize.embedding"
    stage = "quantize"

    bits: int = 8
    mode: Literal["affine", "codebook"] = "affine"
    scale: Literal["absmax", "mse"] = "absmax"

    def validate(self) -> None:
        self._require(self.bits in (4, 8), "bits", "4 or 8", self.bits)
        self._require(self.mode != "codebook" or self.bits == 4, "bits", "4 for mode 'codebook'", self.bits)
        self._require(self.mode == "affine" or self.scale == "absmax", "scale", "'absmax' for mode 'codebook'",
                      self.scale)


def embedding_tables(model: nn.Module, targets: Targets) -> list[tuple[str, nn.Embedding | TrimmedEmbedding]]:
    """Targeted ``nn.Embedding`` / :class:`TrimmedEmbedding` modules (other types are skipped)."""
    found: list[tuple[str, nn.Embedding | TrimmedEmbedding]] = [
        (n, m) for n, m in targets.iter(model) if isinstance(m, (nn.Embedding, TrimmedEmbedding))]
    if not found:
        raise MethodError("the targets select no nn.Embedding (or trimmed embedding) to quantise")
    return found


@register_method(EmbeddingQuant)
def quantize_embeddings(model: nn.Module, config: EmbeddingQuant, targets: Targets, ctx: Context) -> Record:
    layers: dict[str, dict[str, Any]] = {}
    code_bytes = value_bytes = fp32_bytes = 0
    for name, emb in embedding_tables(model, targets):
        if isinstance(emb, nn.Embedding) and emb.max_norm is not None:
            raise MethodError(f"{name}: cannot quantise an nn.Embedding with max_norm (it rewrites rows on lookup)")
        remap = emb.remap if isinstance(emb, TrimmedEmbedding) else None
        q = QuantEmbedding.from_weight(emb.weight, config.bits, config.mode, padding_idx=emb.padding_idx,
                                       remap=remap, scale=config.scale)
        swap_module(model, name, q)
        layers[name] = q.meta
        code_bytes += q.codes.numel()
        value_bytes += (q.scale if config.mode == "affine" else q.codebook).numel() * 4
        fp32_bytes += q.meta["rows"] * q.meta["dim"] * 4
    summary = {"layers": len(layers), "bits": config.bits, "mode": config.mode, "code_bytes": code_bytes,
               "scale_bytes": value_bytes, "fp32_bytes": fp32_bytes,
               "compression": round(fp32_bytes / max(1, code_bytes + value_bytes), 4)}
    return Record(kind="", data={"layers": layers}, summary=summary)


@register_replay(EmbeddingQuant)
def replay_embeddings(model: nn.Module, record: Record) -> None:
    """Swap in empty :class:`QuantEmbedding` s where the record says (no data needed)."""
    for name, meta in record.data["layers"].items():
        swap_module(model, name, QuantEmbedding(meta))


__all__ = ["EmbeddingQuant", "QuantEmbedding", "pack_rows", "row_bytes", "unpack_rows"]
