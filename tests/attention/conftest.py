"""Tiny random HF encoders (built offline) and a padded batch for the attention tests."""
from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn


def tiny_bert(impl: str = "eager", seed: int = 0, max_pos: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=max_pos, attn_implementation=impl)
    return transformers.BertModel(cfg).eval()


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64)
    return transformers.ViTModel(cfg, add_pooling_layer=False).eval()


def padded_batch(n: int = 9) -> dict[str, torch.Tensor]:
    """Three sequences of ``n`` tokens: full, padded after 6, padded after 3."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 60, (3, n), generator=gen)
    mask = torch.ones(3, n, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def bert() -> nn.Module:
    return tiny_bert()
