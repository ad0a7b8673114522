"""Tiny random BERT sequence classifiers and data for the early-exit tests (built offline)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def tiny_bert_classifier(seed: int = 0, layers: int = 3) -> nn.Module:
    """Random ``BertForSequenceClassification``: 3 blocks, hidden 32, 4 heads, 2 classes."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=16, num_labels=2)
    return transformers.BertForSequenceClassification(config).eval()


def text_batches(n: int = 3, batch: int = 4, seq: int = 8, seed: int = 0) -> list[tuple[dict[str, Any], Any]]:
    """``(inputs, labels)`` batches with padding in the last row (mask zeros at the end)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 50, (batch, seq), generator=gen)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[-1, seq // 2:] = 0
        out.append(({"input_ids": ids, "attention_mask": mask}, torch.randint(0, 2, (batch,), generator=gen)))
    return out
