"""Extend a model's learned absolute position embeddings beyond what it was trained on.

MiniLM (BERT family) has 512 learned positions, so it cannot read a 4,096-token input at
all; an efficient attention only pays off on long inputs, so the long-input benchmark
first gives the model more positions. Two ways, both without training:

- ``"copy"`` (default, what Longformer did when it grew RoBERTa to 4,096): positions past
  the trained range repeat the trained table (row ``p`` takes row ``p mod 512``). Every
  local neighbourhood looks like one the model has seen, which suits windowed attention:
  a token only compares itself with nearby tokens, whose relative offsets stay right
  everywhere but at the seams.
- ``"interpolate"``: stretch the table linearly over the new range (row ``p`` reads the
  trained table at ``p * (old - 1) / (new - 1)``). Keeps the global order monotone but
  squeezes neighbouring positions closer than in training.

Either way the result is a starting point for distillation or fine-tuning on long text,
not a model trained for long inputs; the benchmark uses it for SPEED only (the timing of
an encoder does not depend on the embedding values).

This is a plain function, not a recorded kind: ``save``/``restore`` rebuild the model
from its spec with the original number of positions.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import ModelSpecError

Mode = Literal["copy", "interpolate"]


def _position_tables(model: nn.Module) -> list[nn.Module]:
    """Every HF embeddings module holding a learned ``position_embeddings`` table."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "position_embeddings", None), nn.Embedding)]


def extend_positions(model: nn.Module, n_positions: int, mode: Mode = "copy") -> nn.Module:
    """Give ``model`` ``n_positions`` absolute positions in place (and return it).

    Updates the ``position_embeddings`` table, the ``position_ids`` / ``token_type_ids``
    buffers HF keeps beside it, and ``config.max_position_embeddings``. RoBERTa-style
    tables whose first rows are reserved (``padding_idx``) keep those rows and extend the
    rest. Shrinking is refused (it would silently drop trained rows).
    """
    if mode not in ("copy", "interpolate"):
        raise ModelSpecError(f"unknown position extension mode {mode!r}; expected 'copy' or 'interpolate'")
    tables = _position_tables(model)
    if not tables:
        raise ModelSpecError(f"{type(model).__name__} has no learned absolute position embedding "
                             "(an nn.Embedding named position_embeddings) to extend")
    for emb_mod in tables:
        old: nn.Embedding = emb_mod.position_embeddings
        pad = old.padding_idx
        offset = 0 if pad is None else pad + 1          # rows reserved before position 0
        n_old = old.num_embeddings - offset
        if n_positions < n_old:
            raise ModelSpecError(f"cannot extend {n_old} positions to fewer ({n_positions})")
        w = old.weight.detach()                          # [offset + n_old, H]
        trained = w[offset:]                             # [n_old, H]
        if mode == "copy":
            idx = torch.arange(n_positions, device=w.device) % n_old
            grown = trained[idx]                         # [n_positions, H]
        else:
            grown = F.interpolate(trained.T[None], size=n_positions, mode="linear",
                                  align_corners=True)[0].T  # [n_positions, H]
        new = nn.Embedding(offset + n_positions, w.shape[1], padding_idx=pad,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(torch.cat([w[:offset], grown], dim=0))
        new.weight.requires_grad_(old.weight.requires_grad)
        emb_mod.position_embeddings = new
        total = offset + n_positions
        if isinstance(getattr(emb_mod, "position_ids", None), torch.Tensor):
            pid = emb_mod.position_ids
            emb_mod.position_ids = torch.arange(total, device=pid.device, dtype=pid.dtype).expand((1, -1))
        if isinstance(getattr(emb_mod, "token_type_ids", None), torch.Tensor):
            tt = emb_mod.token_type_ids
            emb_mod.token_type_ids = torch.zeros((1, total), device=tt.device, dtype=tt.dtype)
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "max_position_embeddings"):
            cfg.max_position_embeddings = offset + n_positions
    return model
