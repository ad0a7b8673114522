"""prune.layers: dropping transformer blocks from small random HF models and plain torch models."""
from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

import slimkit
from slimkit.core.errors import ConfigError, MethodError
from slimkit.prune.layers import LayerPrune, kept_blocks

IDS = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 8, 1, 0, 6]])  # [B=2, T=6]


def _bert() -> nn.Module:
    torch.manual_seed(0)
    c = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    return T.BertModel(c).eval()


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    c = T.GPT2Config(vocab_size=50, n_embd=16, n_layer=4, n_head=2, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    return T.GPT2LMHeadModel(c).eval()


def _llama() -> nn.Module:
    torch.manual_seed(0)
    c = T.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return T.LlamaForCausalLM(c).eval()


def _qwen2() -> nn.Module:
    """Per-layer attention types (sliding window in the upper half) must follow the kept blocks."""
    torch.manual_seed(0)
    c = T.Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      use_sliding_window=True, sliding_window=3, max_window_layers=2)
    return T.Qwen2ForCausalLM(c).eval()


def _t5() -> nn.Module:
    torch.manual_seed(0)
    c = T.T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_heads=2)
    return T.T5EncoderModel(c).eval()


def _out(model: nn.Module, **kw) -> torch.Tensor:
    with torch.no_grad():
        o = model(input_ids=IDS, **kw)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _bypassed(model: nn.Module, blocks: nn.ModuleList, dropped: list[int]) -> torch.Tensor:
    """Reference: the original model with the dropped blocks turned into identities by hooks."""
    def identity(module, args, kwargs, output):
        h = args[0] if args else kwargs["hidden_states"]
        return h if isinstance(output, torch.Tensor) else (h, *output[1:])
    handles = [blocks[i].register_forward_hook(identity, with_kwargs=True) for i in dropped]
    try:
        return _out(model)
    finally:
        for h in handles:
            h.remove()


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("build, blocks_of, depth_key, cfg, dropped", [
    (_bert, lambda m: m.encoder.layer, "num_hidden_layers", LayerPrune(drop=(0, 2)), [0, 2]),
    (_gpt2, lambda m: m.transformer.h, "n_layer", LayerPrune(keep_every=2), [0, 2]),
    (_llama, lambda m: m.model.layers, "num_hidden_layers", LayerPrune(drop=(1, -1)), [1, 3]),
    (_qwen2, lambda m: m.model.layers, "num_hidden_layers", LayerPrune(drop=(0, 3)), [0, 3]),
    (_t5, lambda m: m.encoder.block, "num_layers", LayerPrune(drop=(0,)), [0]),
], ids=["bert", "gpt2", "llama", "qwen2", "t5"])
def test_drop_matches_bypassing_the_blocks_and_round_trips(tmp_path, build, blocks_of, depth_key, cfg, dropped):
    dense = build()
    n = len(blocks_of(dense))
    reference = _bypassed(dense, blocks_of(dense), dropped)
    small = slimkit.apply(dense, cfg)
    assert len(blocks_of(dense)) == n  # the caller's model is untouched
    assert len(blocks_of(small)) == n - len(dropped)
    assert getattr(small.config, depth_key) == n - len(dropped)
    assert _n_params(small) < _n_params(dense)
    rec = slimkit.records(small)[-1]
    assert rec.summary["blocks_after"] == n - len(dropped) and rec.summary["params_after"] == _n_params(small)
    out = _out(small)
    assert torch.allclose(out, reference, atol=1e-5)
    for j, block in enumerate(blocks_of(small)):  # KV caches index layers by layer_idx
        assert all(m.layer_idx == j for m in block.modules() if getattr(m, "layer_idx", None) is not None)

    slimkit.save(small, tmp_path / "sk")
    again = slimkit.restore(tmp_path / "sk", model=build)
    assert torch.equal(_out(again), out)

    small.save_pretrained(tmp_path / "hf")
    reloaded = type(small).from_pretrained(tmp_path / "hf").eval()
    assert len(blocks_of(reloaded)) == n - len(dropped)
    assert torch.allclose(_out(reloaded), out, atol=1e-6)


def test_per_layer_config_lists_follow_the_kept_blocks():
    small = slimkit.apply(_qwen2(), LayerPrune(drop=(0, 3)))
    assert small.config.layer_types == ["full_attention", "sliding_attention"]


def test_t5_relative_bias_moves_to_new_first_block():
    small = slimkit.apply(_t5(), LayerPrune(drop=(0,)))
    first = small.encoder.block[0].layer[0].SelfAttention
    assert first.has_relative_attention_bias and isinstance(first.relative_attention_bias, nn.Embedding)


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_kv_cache_decoding_matches_full_forward_after_drop(build):
    small = slimkit.apply(build(), LayerPrune(drop=(0, 1)))
    with torch.no_grad():
        full = small(input_ids=IDS).logits  # [B, T, V]
        first = small(input_ids=IDS[:, :-1], use_cache=True)
        step = small(input_ids=IDS[:, -1:], cache=first.cache, use_cache=True).logits
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-5)


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(5)])
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_plain_torch_model_equals_manual_kept_blocks(tmp_path):
    dense = Tower()
    small = slimkit.apply(dense, LayerPrune(keep_every=2))
    assert len(small.blocks) == 2
    x = torch.randn(3, 4)
    manual = dense.stem(x)
    for i in (1, 3):
        manual = dense.blocks[i](manual)
    assert torch.allclose(small(x), dense.head(manual))
    slimkit.save(small, tmp_path)
    assert torch.equal(slimkit.restore(tmp_path, model=Tower)(x), small(x))


def test_several_lists_need_a_target_and_targets_pick_one():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
            self.b = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    with pytest.raises(MethodError, match="several block lists"):
        slimkit.apply(Two(), LayerPrune(drop=(0,)))
    out = slimkit.apply(Two(), LayerPrune(drop=(0,)), slimkit.Targets(include=("b",)))
    assert len(out.a) == 3 and len(out.b) == 2
    with pytest.raises(MethodError, match="name no ModuleList"):
        slimkit.apply(Two(), LayerPrune(drop=(0,)), slimkit.Targets(include=("c",)))


def test_config_and_index_errors():
    with pytest.raises(ConfigError, match="exactly one"):
        LayerPrune()
    with pytest.raises(ConfigError, match="exactly one"):
        LayerPrune(drop=(1,), keep_every=2)
    with pytest.raises(ConfigError, match="keep_every"):
        LayerPrune(keep_every=0)
    assert LayerPrune.from_dict({"drop": [1, 2]}).drop == (1, 2)
    assert kept_blocks(6, LayerPrune(keep_every=3)) == [2, 5]
    with pytest.raises(MethodError, match="out of range"):
        kept_blocks(4, LayerPrune(drop=(4,)))
    with pytest.raises(MethodError, match="remove all"):
        kept_blocks(2, LayerPrune(drop=(0, 1)))
