"""Structured pruning of HF decoders saved with their default ``use_cache=True``."""
from __future__ import annotations

import pytest
import torch

import slimkit
from slimkit import Targets
from slimkit.core import Context
from slimkit.prune import HeadPrune

transformers = pytest.importorskip("transformers")


def test_heads_of_a_decoder_with_kv_cache_on_are_pruned_and_output_kept_shape() -> None:
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    assert cfg.use_cache  # the default a user's saved folder carries
    model = transformers.Qwen2Model(cfg).eval()
    batch = {"input_ids": torch.randint(0, 100, (2, 7))}
    small = slimkit.apply(model, HeadPrune(ratio=0.5), Targets(), Context(example_inputs=batch))
    attn = small.layers[0].self_attn
    assert attn.q_proj.out_features < model.layers[0].self_attn.q_proj.out_features
    with torch.no_grad():
        out = small(**batch)
    assert out.last_hidden_state.shape == (2, 7, 32)
    assert torch.isfinite(out.last_hidden_state).all()
