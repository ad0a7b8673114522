"""The shared conversion base: finding modules, the HF interface, masks, unsupported models."""
from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from slimkit.attention.base import ConvertedAttention, convert, find_attention, key_padding_mask, replay
from slimkit.core import MethodError, Targets

from .conftest import padded_batch, tiny_bert, tiny_vit


class ExactSoftmax(ConvertedAttention):
    """Plain softmax attention through the base: must reproduce the HF module exactly."""

    kind = "test.exact"

    def attend(self, q, k, v, key_padding_mask):  # type: ignore[no-untyped-def]
        scores = q @ k.transpose(-1, -2) * self.scaling  # [B, H, N, N]
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        return scores.softmax(-1) @ v

    @classmethod
    def from_options(cls, source, layout, options):  # type: ignore[no-untyped-def]
        return cls(source, layout)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_exact_subclass_reproduces_bert_with_padding(impl: str) -> None:
    model = tiny_bert(impl)
    batch = padded_batch()
    with torch.no_grad():
        want = model(**batch).last_hidden_state
        rec = convert(model, Targets(), "test.exact", lambda i, src, lay: ExactSoftmax(src, lay))
        got = model(**batch).last_hidden_state
    assert sorted(rec.data["layers"]) == [f"encoder.layer.{i}.attention.self" for i in range(2)]
    assert all(isinstance(model.encoder.layer[i].attention.self, ExactSoftmax) for i in range(2))
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    # the trained projections keep their state-dict names
    assert "encoder.layer.0.attention.self.query.weight" in model.state_dict()


def test_exact_subclass_reproduces_vit_and_replays() -> None:
    model = tiny_vit()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(pixel_values=x).last_hidden_state
        rec = convert(model, Targets(), "test.exact", lambda i, src, lay: ExactSoftmax(src, lay))
        torch.testing.assert_close(model(pixel_values=x).last_hidden_state, want, atol=1e-5, rtol=1e-5)
    assert {v["family"] for v in rec.data["layers"].values()} == {"vit"}
    fresh = tiny_vit(seed=1)
    replay(fresh, rec, ExactSoftmax)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(pixel_values=x).last_hidden_state, model(pixel_values=x).last_hidden_state)


def test_key_padding_mask_forms() -> None:
    keep = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    additive = torch.zeros(2, 1, 3, 3).masked_fill(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    assert torch.equal(key_padding_mask(additive, 2, 3), keep)
    assert torch.equal(key_padding_mask(keep[:, None, None, :].expand(2, 1, 3, 3), 2, 3), keep)
    assert torch.equal(key_padding_mask(keep.long(), 2, 3), keep)
    assert key_padding_mask(None, 2, 3) is None
    with pytest.raises(MethodError, match="shape"):
        key_padding_mask(torch.ones(2, 4), 2, 3)
    with pytest.raises(MethodError, match="BlockMask"):
        key_padding_mask(object(), 2, 3)


def test_unsupported_models_are_method_errors() -> None:
    with pytest.raises(MethodError, match="no supported self-attention"):
        find_attention(nn.Sequential(nn.Linear(4, 4)), Targets(), "attention.x")
    torch.manual_seed(0)
    gpt = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50))
    with pytest.raises(MethodError, match="GPT2Attention"):
        find_attention(gpt, Targets(), "attention.x")
    dec = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, is_decoder=True)
    with pytest.raises(MethodError, match="causal"):
        find_attention(transformers.BertModel(dec), Targets(), "attention.x")
    model = tiny_bert()
    convert(model, Targets(), "test.exact", lambda i, src, lay: ExactSoftmax(src, lay))
    with pytest.raises(MethodError, match="already converted"):
        find_attention(model, Targets(), "attention.x")
