"""quantize.embedding: per-row affine and shared-codebook tables, packed codes, trimmed tables, round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, MethodError
from slimkit.prune.vocab import TrimmedEmbedding, VocabPrune
from slimkit.quantize.embedding import EmbeddingQuant, QuantEmbedding, pack_rows, unpack_rows
from slimkit.quantize.packing import unpack_bits


class Tiny(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(50, 16, padding_idx=0)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids))  # [B, T, 4]


IDS = torch.arange(50).reshape(5, 10)  # every id once


def quantized(model: nn.Module, **options) -> nn.Module:
    return slimkit.apply(model, EmbeddingQuant(**options))


@pytest.mark.parametrize("dim", [5, 16])
def test_row_packing_matches_pack_bits(dim: int) -> None:
    codes = torch.randint(0, 16, (7, dim), generator=torch.Generator().manual_seed(0))
    packed = pack_rows(codes, 4)  # [7, ceil(dim / 2)]
    assert packed.shape == (7, (dim + 1) // 2)
    assert torch.equal(unpack_rows(packed[[3, 1]], 4, dim), codes[[3, 1]])
    if dim % 2 == 0:  # rows need no padding: the same bytes as one flat pack_bits stream
        assert torch.equal(unpack_bits(packed.reshape(-1), 4, codes.numel()).long().reshape(7, dim), codes)
    assert torch.equal(unpack_rows(pack_rows(codes * 15, 8), 8, dim), codes * 15)


@pytest.mark.parametrize("bits", [8, 4])
def test_affine_rows_err_at_most_half_a_step(bits: int) -> None:
    model = Tiny()
    out = quantized(model, bits=bits)
    q = out.emb
    assert isinstance(q, QuantEmbedding) and q.num_embeddings == 50 and q.embedding_dim == 16
    w = model.emb.weight.detach()
    err = (q.dequantized() - w).abs().amax(dim=1)  # [50]
    assert torch.all(err <= q.scale / 2 + 1e-6)
    assert torch.equal(q(IDS), q.dequantized()[IDS])  # lookup = the gathered rows
    assert torch.equal(q(torch.tensor([0])), torch.zeros(1, 16))  # the zero padding row stays zero
    rec = slimkit.records(out)[0]
    assert rec.summary["code_bytes"] == 50 * 16 * bits // 8 and rec.summary["fp32_bytes"] == 50 * 16 * 4


def test_four_bits_store_half_the_bytes_of_eight() -> None:
    q8, q4 = quantized(Tiny(), bits=8).emb, quantized(Tiny(), bits=4).emb
    assert q8.codes.dtype == q4.codes.dtype == torch.uint8
    assert q4.codes.nbytes * 2 == q8.codes.nbytes == 50 * 16


def test_codebook_uses_at_most_16_values() -> None:
    model = Tiny()
    q = quantized(model, bits=4, mode="codebook").emb
    table = q.dequantized()
    assert table.unique().numel() <= 16 and q.codebook.shape == (16,)
    assert (table - model.emb.weight.detach()).abs().mean() < 0.1  # N(0, 1) weights, 16 levels
    assert q.codes.nbytes == 50 * 8


@pytest.mark.parametrize("bits", [8, 4])
def test_mse_scales_lower_the_error_on_the_full_signed_grid(bits: int) -> None:
    model = Tiny()
    w = model.emb.weight.detach()
    absmax, mse = quantized(model, bits=bits).emb, quantized(model, bits=bits, scale="mse").emb
    assert mse.meta["qmin"] == -(2 ** (bits - 1)) and absmax.meta["qmin"] == -(2 ** (bits - 1)) + 1
    codes = unpack_rows(mse.codes, bits, 16)
    assert int(codes.min()) == 0 and int(codes.max()) <= 2**bits - 1  # [-2^(b-1), qmax] stored offset
    err_absmax = float(((absmax.dequantized() - w) ** 2).mean())
    err_mse = float(((mse.dequantized() - w) ** 2).mean())
    assert err_mse < err_absmax
    assert torch.equal(mse(torch.tensor([0])), torch.zeros(1, 16))  # the zero padding row stays zero
    assert mse.codes.nbytes == absmax.codes.nbytes  # same bytes
    assert slimkit.records(quantized(model, bits=4, scale="mse"))[0].config["scale"] == "mse"


def test_quantizes_a_trimmed_table_and_round_trips(tmp_path: Path) -> None:
    ctx = Context(calib_data=[torch.tensor([[2, 3, 3, 5, 7]])], progress=False)
    trimmed = slimkit.apply(Tiny(), VocabPrune(always_keep=(1,), unk_id=1), ctx=ctx)
    assert isinstance(trimmed.emb, TrimmedEmbedding)
    out = quantized(trimmed, bits=8)
    q = out.emb
    assert isinstance(q, QuantEmbedding) and q.meta["rows"] == 6 and q.num_embeddings == 50
    assert torch.equal(q.remap, trimmed.emb.remap)
    with torch.no_grad():
        assert torch.allclose(q(IDS), trimmed.emb(IDS), atol=0.02)
        assert torch.equal(q(torch.tensor([9, 40])), q(torch.tensor([1, 1])))  # dropped ids -> unk
    assert [r.kind for r in slimkit.records(out)] == ["prune.vocab", "quantize.embedding"]
    slimkit.save(out, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: Tiny(seed=1))
    with torch.no_grad():
        assert torch.equal(restored(IDS), out.eval()(IDS))


@pytest.mark.parametrize("options", [{"bits": 8}, {"bits": 4, "mode": "codebook"}, {"bits": 4, "scale": "mse"}])
def test_save_restore_plain_table(tmp_path: Path, options: dict) -> None:
    out = quantized(Tiny(), **options)
    slimkit.save(out, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: Tiny(seed=1))
    assert {k: v.dtype for k, v in restored.state_dict().items()} == {k: v.dtype for k, v in out.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(restored(IDS), out.eval()(IDS))


def test_errors() -> None:
    with pytest.raises(ConfigError, match="bits"):
        EmbeddingQuant(bits=2)
    with pytest.raises(ConfigError, match="codebook"):
        EmbeddingQuant(bits=8, mode="codebook")
    with pytest.raises(ConfigError, match="scale"):
        EmbeddingQuant(bits=4, mode="codebook", scale="mse")
    with pytest.raises(MethodError, match="no nn.Embedding"):
        quantized(nn.Sequential(nn.Linear(4, 4)))
