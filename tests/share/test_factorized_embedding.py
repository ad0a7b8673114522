"""share.factorized_embedding: ALBERT's V x E table + E x H projection from the table's truncated SVD."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit import measure
from slimkit.core import ConfigError, Context, MethodError, Recipe, Targets, config_class
from slimkit.share.factorized_embedding import FactorizedEmbedding, FactorizedEmbeddingShare, svd_factors

pytestmark = pytest.mark.usefixtures("one_thread_module")


class Encoder(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.words = nn.Embedding(80, 32, padding_idx=1)
        self.pos = nn.Embedding(8, 32)
        self.fc = nn.Linear(32, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.words(ids) + self.pos(torch.arange(ids.shape[1]))
        return self.fc(torch.tanh(h))


def _ids() -> torch.Tensor:
    ids = torch.randint(0, 80, (2, 8), generator=torch.Generator().manual_seed(0))
    ids[:, -2:] = 1
    return ids


def test_truncated_svd_is_the_best_low_rank_approximation() -> None:
    torch.manual_seed(0)
    w = torch.randn(50, 20, dtype=torch.float64)
    a, b = svd_factors(w, 20)
    assert torch.allclose(a @ b, w, atol=1e-10)
    s = torch.linalg.svdvals(w)
    for k in (2, 5, 10):
        a, b = svd_factors(w, k)
        # Eckart-Young: the error is exactly the energy of the dropped singular values
        assert torch.isclose((a @ b - w).norm() ** 2, (s[k:] ** 2).sum())
    errs = [(torch.matmul(*svd_factors(w, k)) - w).norm() for k in (1, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


def test_lookup_is_the_factored_table_rows_and_the_padding_row_is_not_trained() -> None:
    torch.manual_seed(1)
    emb = nn.Embedding(80, 32, padding_idx=1)  # nn.Embedding zeroes the padding row: it stays zero
    fact = FactorizedEmbedding.from_embedding(emb, 6)
    ids = _ids()
    assert torch.allclose(fact(ids), fact.dense_weight()[ids], atol=1e-6)
    assert fact(torch.tensor([1])).abs().max() < 1e-6
    fact(ids).sum().backward()
    assert fact.embed.weight.grad is not None and fact.embed.weight.grad[1].abs().max() == 0
    assert fact.embed.weight.grad[ids[0, 0]].abs().max() > 0


def test_apply_save_restore_bit_exact_profile_counts_the_projection(tmp_path: Path) -> None:
    model = Encoder(0).eval()
    ids = _ids()
    out = slimkit.apply(model, FactorizedEmbeddingShare(dim=4), Targets(include=("words",)), Context())
    assert isinstance(out.words, FactorizedEmbedding) and isinstance(out.pos, nn.Embedding)
    (rec,) = slimkit.records(out)
    assert rec.summary["params_before"] == 80 * 32 and rec.summary["params_after"] == 80 * 4 + 4 * 32
    with torch.no_grad():
        expected = out(ids)
    folder = slimkit.save(out, tmp_path / "f", spec="x")
    restored = slimkit.restore(folder, model=lambda: Encoder(1))
    with torch.no_grad():
        assert torch.equal(restored(ids), expected)
    prof = measure.profile(out, ids)
    raw = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    json.loads(raw[8:8 + n])
    assert prof.bytes_on_disk == len(raw) - 8 - n
    dense = measure.profile(model, ids)
    assert dense.bytes_on_disk - prof.bytes_on_disk == 4 * (80 * 32 - 80 * 4 - 4 * 32)
    assert prof.macs == dense.macs + ids.numel() * 4 * 32  # the E x H projection per token


def test_yaml_alias_and_error_with_dim_too_large_or_no_embedding() -> None:
    assert config_class("share.factorized-embedding") is FactorizedEmbeddingShare
    recipe = Recipe.from_yaml("""
name: albert
steps:
  - kind: share.factorized-embedding
    targets: {include: ["words"]}
    with: {dim: 8, gate: params, gate_min_ratio: 2.0}
""")
    out = recipe.run(Encoder(0), Context())
    assert out.words.dim == 8 and [r.kind for r in slimkit.records(out)] == ["share.factorized_embedding"]
    with pytest.raises(MethodError, match="below"):
        slimkit.apply(Encoder(0), FactorizedEmbeddingShare(dim=32), Targets(include=("words",)), Context())
    with pytest.raises(MethodError, match="Linear"):
        slimkit.apply(Encoder(0), FactorizedEmbeddingShare(dim=4), Targets(include=("fc",)), Context())
    with pytest.raises(ConfigError, match="dim"):
        FactorizedEmbeddingShare(dim=0)


def test_gate_params_declines_a_table_the_factors_would_not_shrink_enough() -> None:
    out = slimkit.apply(Encoder(0), FactorizedEmbeddingShare(dim=4, gate="params", gate_min_ratio=3.0),
                        Targets(types=("Embedding",)), Context())
    kept = {d["layer"]: d["kept"] for d in slimkit.records(out)[0].data["gate"]}
    assert kept == {"words": "factorized", "pos": "dense"}  # 8 x 32 -> 8 x 4 + 4 x 32 is 1.3x smaller only
    assert isinstance(out.pos, nn.Embedding)


def test_frequency_weights_minimise_the_weighted_error_and_counts_are_the_looked_up_ids() -> None:
    torch.manual_seed(2)
    w = torch.randn(40, 12, dtype=torch.float64)
    weights = torch.ones(40, dtype=torch.float64)
    weights[:5] = 100.0  # five frequent rows
    uniform = torch.matmul(*svd_factors(w, 3))
    weighted = torch.matmul(*svd_factors(w, 3, weights))

    def werr(approx: torch.Tensor) -> float:
        return float((weights[:, None] * (approx - w) ** 2).sum())

    assert werr(weighted) < werr(uniform)
    assert (weighted - w)[:5].norm() < (uniform - w)[:5].norm()
    assert torch.allclose(torch.matmul(*svd_factors(w, 3, torch.full((40,), 7.0, dtype=torch.float64))), uniform)

    from slimkit.share.factorized_embedding import token_counts

    model = Encoder(0)
    batches = [_ids(), torch.tensor([[3, 3, 3, 5, 1, 1, 1, 1]])]
    counts = token_counts(model, ["words", "pos"], batches)
    expected = torch.bincount(torch.cat([b.reshape(-1) for b in batches]), minlength=80).double()
    assert torch.equal(counts["words"], expected)
    assert torch.equal(counts["pos"], torch.full((8,), 2.0, dtype=torch.float64))  # one arange(8) per batch
    assert torch.equal(token_counts(model, ["words"], batches, limit=1)["words"],
                       torch.bincount(batches[0].reshape(-1), minlength=80).double())


def test_frequency_init_needs_data_and_favours_the_counted_rows() -> None:
    ids = torch.randint(2, 12, (4, 8), generator=torch.Generator().manual_seed(3))  # only rows in 2..11 occur
    model = Encoder(0)
    cfg = FactorizedEmbeddingShare(dim=4, init="frequency", data="calib")
    with pytest.raises(MethodError, match="calib_data"):
        slimkit.apply(model, cfg, Targets(include=("words",)), Context())
    freq = slimkit.apply(model, cfg, Targets(include=("words",)), Context(calib_data=[ids]))
    plain = slimkit.apply(model, FactorizedEmbeddingShare(dim=4), Targets(include=("words",)), Context())
    assert slimkit.records(freq)[0].summary["rows_seen"] == {"words": len(ids.unique())}
    w = model.words.weight.detach()
    err_freq = (freq.words.dense_weight() - w)[2:12].norm()
    err_plain = (plain.words.dense_weight() - w)[2:12].norm()
    assert err_freq < err_plain
