"""Plain Hugging Face model folders (``hf:PATH`` without sentence-transformers files):
which class to build, which family the model is, and example inputs without a tokenizer.

A folder written by ``save_pretrained`` holds ``config.json`` and the weights; a tokenizer
is optional. Without one, example inputs (for tracing, profiling, export checks) are
token ids drawn from the config's vocabulary, so pruning, quantization and export of the
folder work; tasks that read text still need a tokenizer and say so.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ModelSpecError


def base_model_class(path: Path) -> Any | None:
    """The transformers class named first in the folder's ``architectures`` when it is a
    bare model (no task head, e.g. ``T5EncoderModel``, which ``AutoModel`` would replace by
    the full ``T5Model`` with a random decoder); None to let ``AutoModel`` choose.

    Only classes of the installed ``transformers`` package are looked up (never code from
    the folder).
    """
    try:
        cfg = json.loads((path / "config.json").read_text())
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"{path / 'config.json'} is not readable JSON: {exc}") from exc
    if cfg.get("auto_map"):  # the folder's model is defined by Python files shipped inside it
        raise ModelSpecError(f"cannot load a Hugging Face model from {path}: its config.json names remote code "
                             f"(auto_map {sorted(cfg['auto_map'])}), which slimkit never imports; load the model "
                             "yourself and pass it to slimkit.apply / restore(model=...)")
    archs = cfg.get("architectures") or []
    name = archs[0] if archs and isinstance(archs[0], str) else ""
    if not name or "For" in name:  # a head class: slimkit loads the bare model as before
        return None
    import transformers

    cls = getattr(transformers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def image_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of an HF vision model's ``pixel_values``, from its config; None for other models."""
    if getattr(model, "main_input_name", None) != "pixel_values":
        return None
    cfg = model.config
    size = getattr(cfg, "image_size", 224)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return int(getattr(cfg, "num_channels", 3)), h, w


def text_config(model: nn.Module) -> Any | None:
    """The first HF config inside ``model`` that has a ``vocab_size``."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if isinstance(getattr(cfg, "vocab_size", None), int):
            return cfg
    return None


def max_tokens(model: nn.Module, default: int = 1 << 30) -> int:
    """The longest token sequence ``model`` takes: its position table (less 2 for RoBERTa's offset)."""
    cfg = text_config(model)
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if not isinstance(n, int) or n <= 2:
        return default
    return n - 2 if getattr(cfg, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else n


def synthetic_text_inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` ``[batch_size, seq_len]``: ids uniform over the config's
    vocabulary (seeded), all-ones mask. For folders that ship no tokenizer."""
    cfg = text_config(model)
    if cfg is None:
        raise ModelSpecError(f"{type(model).__name__}: no tokenizer and no config.vocab_size to draw example ids from")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(cfg.vocab_size), (batch_size, seq_len), generator=gen)  # [B, T]
    return {"input_ids": ids, "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}
