"""Vocabulary trimming (``prune.vocab``): keep only the embedding rows a corpus uses.

A small transformer spends much of its size on the token-embedding table (for MiniLM-L6
about half its parameters: docs/pruning.md#figures-behind-design-choices-in-the-code), yet
a given domain uses a fraction of
the vocabulary. Trimming keeps the rows of the ids that occur and maps every other id to
``unk_id``'s row, so the tokenizer, the id space and every caller stay unchanged.

Which ids are kept:

- ``keep_ids`` when given (plus ``always_keep``), otherwise every id that occurs at least
  ``min_count`` times in the corpus: the batches of ``ctx.calib_data`` and
  ``ctx.train_data``. A batch is a dict with ``"input_ids"``, an ``(inputs, target)``
  pair whose ``inputs`` is such a dict, or an integer id tensor (alone or first in a
  pair); batches of any other form are skipped.
- ``always_keep`` (BERT's [PAD]/[UNK]/[CLS]/[SEP]/[MASK] by default): ids outside the
  table are ignored, so the BERT defaults do no harm on a smaller vocabulary.
- the table's ``padding_idx``, so padding keeps its own (zero-gradient) row.

``unk_id`` must be among the kept ids. The summary's ``coverage`` is the fraction of the
corpus's token occurrences whose id is kept: 1.0 by construction with ``min_count=1``;
measured on the given data when ``keep_ids`` is explicit (``None`` without data).

Targets: by default the word embedding, i.e. the first ``nn.Embedding`` with the largest
``num_embeddings`` (position and token-type tables are indexed by something else). With
explicit targets every matched ``nn.Embedding`` is trimmed with the same kept ids, so they
must share one vocabulary size. An output head *tied* to the table is not trimmed: it
keeps its own full-size weight (and its logits over the full vocabulary).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
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
from ..core.record import dtype_named, index_list

BERT_SPECIAL_IDS = (0, 100, 101, 102, 103)  # [PAD], [UNK], [CLS], [SEP], [MASK]


class TrimmedEmbedding(nn.Module):
    """An embedding that stores only the kept rows; ``remap`` sends old ids to new rows.

    ``num_embeddings`` stays the *old* vocabulary size (the id space callers index with)
    and ``padding_idx`` stays an old id; ``padding_row`` is its row in ``weight``.
    ``TrimmedEmbedding(...)`` with no weights is what ``restore`` loads the saved
    ``remap`` and ``weight`` into.
    """

    remap: torch.Tensor

    def __init__(self, num_embeddings: int, kept: list[int], embedding_dim: int, *, unk_id: int,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        kept_t = torch.tensor(sorted(kept), dtype=torch.int64)  # [V_new] old ids, increasing
        rows = {int(i): r for r, i in enumerate(kept_t.tolist())}
        if unk_id not in rows:
            raise MethodError(f"unk_id {unk_id} is not among the kept ids")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.unk_id = unk_id
        self.padding_idx = padding_idx
        self.padding_row = rows.get(padding_idx) if padding_idx is not None else None
        remap = torch.full((num_embeddings,), rows[unk_id], dtype=torch.int32)  # [V_old] old id -> row
        remap[kept_t] = torch.arange(kept_t.numel(), dtype=torch.int32)
        self.register_buffer("remap", remap)
        self.weight = nn.Parameter(torch.zeros(kept_t.numel(), embedding_dim))  # [V_new, H]

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, kept: list[int], unk_id: int) -> TrimmedEmbedding:
        """Copy the kept rows of ``emb`` (which must not renormalise rows: ``max_norm`` unset)."""
        if emb.max_norm is not None:
            raise MethodError("cannot trim an nn.Embedding with max_norm (it rewrites rows on lookup)")
        new = cls(emb.num_embeddings, kept, emb.embedding_dim, unk_id=unk_id, padding_idx=emb.padding_idx)
        with torch.no_grad():
            idx = torch.tensor(sorted(kept), dtype=torch.int64, device=emb.weight.device)
            new.weight = nn.Parameter(emb.weight.detach()[idx].clone(), requires_grad=emb.weight.requires_grad)
            new.remap = new.remap.to(emb.weight.device)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.remap[ids], self.weight, padding_idx=self.padding_row)  # [..., H]

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings} ids -> {self.weight.shape[0]} rows, dim={self.embedding_dim}, "
                f"unk_id={self.unk_id}, padding_idx={self.padding_idx}")


@method_config
class VocabPrune(MethodConfig):
    """Trim a token-embedding table to the ids a corpus uses; other ids map to unk_id's row.

    ``keep_ids`` empty: the corpus is every token of ``ctx.calib_data`` and
    ``ctx.train_data`` (dict batches with ``input_ids``, or ``(inputs, target)`` pairs);
    ids seen at least ``min_count`` times are kept. ``always_keep`` ids (BERT's special
    tokens by default) are kept whenever they exist in the table.
    """

    kind = "prune.vocab"
    stage = "shrink"

    keep_ids: tuple[int, ...] = ()
    min_count: int = 1
    always_keep: tuple[int, ...] = BERT_SPECIAL_IDS
    unk_id: int = 100

    def validate(self) -> None:
        self._require(self.min_count >= 1, "min_count", "an int >= 1", self.min_count)
        self._require(all(i >= 0 for i in self.keep_ids), "keep_ids", "non-negative token ids", self.keep_ids)
        self._require(all(i >= 0 for i in self.always_keep), "always_keep", "non-negative token ids",
                      self.always_keep)
        self._require(self.unk_id >= 0, "unk_id", "a non-negative token id", self.unk_id)


def batch_ids(batch: Any) -> torch.Tensor | None:
    """The token ids of one batch (see the module docstring), or ``None`` if it holds none."""
    if isinstance(batch, dict):
        ids = batch.get("input_ids")
        return ids if isinstance(ids, torch.Tensor) else None
    if isinstance(batch, (tuple, list)) and batch:
        return batch_ids(batch[0])
    if isinstance(batch, torch.Tensor) and not (batch.is_floating_point() or batch.is_complex()):
        return batch
    return None


def token_counts(sources: Iterable[Iterable[Any] | None], vocab_size: int) -> torch.Tensor | None:
    """Occurrences of every id over all batches of ``sources``: int64 ``[vocab_size]``,
    or ``None`` when no batch holds token ids."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    seen = False
    for source in sources:
        for batch in source or ():
            ids = batch_ids(batch)
            if ids is None:
                continue
            flat = ids.detach().reshape(-1).cpu().to(torch.int64)  # [B * T]
            if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= vocab_size):
                raise MethodError(f"corpus token id outside [0, {vocab_size}): range "
                                  f"[{int(flat.min())}, {int(flat.max())}]")
            counts += torch.bincount(flat, minlength=vocab_size)
            seen = True
    return counts if seen else None


def vocab_tables(model: nn.Module, targets: Targets) -> list[tuple[str, nn.Embedding]]:
    """The embeddings to trim: the largest one for default targets, else all matched (one vocab size)."""
    found = [(n, m) for n, m in targets.iter(model) if isinstance(m, nn.Embedding)]
    if not found:
        raise MethodError("the targets select no nn.Embedding to trim")
    if targets == Targets():
        biggest = max(m.num_embeddings for _, m in found)
        return [next((n, m) for n, m in found if m.num_embeddings == biggest)]
    sizes = {m.num_embeddings for _, m in found}
    if len(sizes) > 1:
        listing = ", ".join(f"{n} ({m.num_embeddings})" for n, m in found)
        raise MethodError(f"the targeted embeddings have different vocabulary sizes: {listing}; "
                          "target only the tables indexed by token ids")
    return found


def kept_ids(config: VocabPrune, vocab_size: int, counts: torch.Tensor | None,
             padding_ids: Iterable[int] = ()) -> list[int]:
    """The sorted ids to keep (see the module docstring)."""
    if config.keep_ids:
        bad = [i for i in config.keep_ids if i >= vocab_size]
        if bad:
            raise MethodError(f"keep_ids {bad[:5]} are outside the vocabulary of {vocab_size} ids")
        keep = set(config.keep_ids)
    elif counts is not None:
        keep = set(torch.nonzero(counts >= config.min_count).reshape(-1).tolist())
    else:
        raise MethodError("prune.vocab needs keep_ids or a corpus: Context.calib_data / train_data "
                          "batches holding input_ids")
    keep |= {i for i in config.always_keep if i < vocab_size}
    keep |= set(padding_ids)
    if config.unk_id not in keep:
        raise MethodError(f"unk_id {config.unk_id} is not kept (vocabulary of {vocab_size} ids); "
                          "add it to always_keep or keep_ids, or set unk_id to a kept id")
    return sorted(keep)


@register_method(VocabPrune)
def trim_vocab(model: nn.Module, config: VocabPrune, targets: Targets, ctx: Context) -> Record:
    tables = vocab_tables(model, targets)
    vocab = tables[0][1].num_embeddings
    counts = token_counts([ctx.calib_data, ctx.train_data], vocab)
    keep = kept_ids(config, vocab, counts, [m.padding_idx for _, m in tables if m.padding_idx is not None])
    layers: dict[str, dict[str, Any]] = {}
    removed = 0
    for name, emb in tables:
        layers[name] = {"embedding_dim": emb.embedding_dim, "padding_idx": emb.padding_idx,
                        "dtype": str(emb.weight.dtype).removeprefix("torch.")}
        removed += (vocab - len(keep)) * emb.embedding_dim
        swap_module(model, name, TrimmedEmbedding.from_embedding(emb, keep, config.unk_id))
    coverage = None
    if counts is not None and int(counts.sum()) > 0:
        coverage = round(float(counts[torch.tensor(keep)].sum()) / float(counts.sum()), 6)
    data = {"kept": keep, "num_embeddings": vocab, "unk_id": config.unk_id, "layers": layers}
    summary = {"kept_rows": len(keep), "num_embeddings": vocab, "kept_fraction": round(len(keep) / vocab, 6),
               "coverage": coverage, "params_removed": removed}
    return Record(kind="", data=data, summary=summary)


@register_replay(VocabPrune)
def replay_vocab(model: nn.Module, record: Record) -> None:
    """Swap in empty :class:`TrimmedEmbedding` s of the recorded shapes (weights load afterwards)."""
    d = record.data
    n = d["num_embeddings"]
    if type(n) is not int or n < 1:
        raise MethodError(f"{record.kind} replay: num_embeddings must be a positive integer, got {n!r}")
    kept = index_list(d["kept"], n, f"{record.kind} replay")
    for name, meta in d["layers"].items():
        new = TrimmedEmbedding(n, kept, meta["embedding_dim"], unk_id=d["unk_id"], padding_idx=meta["padding_idx"])
        swap_module(model, name, new.to(dtype_named(meta.get("dtype", "float32"), f"{record.kind} replay: {name!r}")))


__all__ = ["TrimmedEmbedding", "VocabPrune", "batch_ids", "kept_ids", "token_counts", "vocab_tables"]
