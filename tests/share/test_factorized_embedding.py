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
from slimkit.share.factorized_embedding import (
    FactorizedEmbedding,
    FactorizedEmbeddingShare,
    refit_codes,
    refit_unseen_rows,
    svd_factors,
)

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


def test_exact_rows_keep_the_most_frequent_rows_exact_and_the_tail_low_rank() -> None:
    torch.manual_seed(3)
    emb = nn.Embedding(80, 32, padding_idx=1)
    counts = torch.ones(80, dtype=torch.float64)
    counts[[7, 3, 40, 1]] = torch.tensor([50.0, 90.0, 20.0, 500.0], dtype=torch.float64)  # the padding row 1 is never kept exact
    fact = FactorizedEmbedding.from_embedding(emb, 4, counts, exact_rows=3)
    plain = FactorizedEmbedding.from_embedding(emb, 4, counts)
    assert fact.slot[[3, 7, 40]].tolist() == [0, 1, 2]  # by count, highest first
    assert (fact.slot[[i for i in range(80) if i not in (3, 7, 40)]] == 3).all()  # -> the zero row
    ids = torch.tensor([[3, 7, 40, 5, 1]])
    out = fact(ids)  # [1, 5, 32]
    assert torch.allclose(out[0, :3], emb.weight[[3, 7, 40]], atol=1e-5)  # exact
    assert torch.allclose(out[0, 3:], plain(ids)[0, 3:], atol=1e-6)  # the tail is the plain factorization
    assert not torch.allclose(out[0, 3], emb.weight[5], atol=1e-3)
    assert torch.allclose(fact.dense_weight()[ids], out, atol=1e-6)
    assert sum(p.numel() for p in fact.parameters()) == 80 * 4 + 4 * 32 + 4 * 32
    fact(ids).sum().backward()
    assert fact.exact is not None and fact.exact.weight.grad is not None
    assert fact.exact.weight.grad[3].abs().max() == 0  # the shared zero row never trains


def test_exact_rows_through_apply_save_and_restore(tmp_path: Path) -> None:
    model = Encoder()
    batches = [_ids() for _ in range(3)]
    ctx = Context(calib_data=batches, progress=False)
    out = slimkit.apply(model, FactorizedEmbeddingShare(dim=4, init="frequency", data="calib", exact_rows=6),
                        Targets(include=("words",)), ctx)
    assert isinstance(out.words, FactorizedEmbedding) and out.words.exact_rows == 6
    assert int((out.words.slot < 6).sum()) == 6 and out.words.slot.dtype == torch.int32
    prof = measure.profile(out, _ids())
    assert prof.bytes_on_disk == sum(t.numel() * t.element_size() for t in out.state_dict().values())
    back = slimkit.restore(slimkit.save(out, tmp_path / "a"), model=Encoder)
    assert torch.equal(back(_ids()), out(_ids()))
    assert torch.equal(back.words.slot, out.words.slot)


def test_exact_rows_need_frequency_init_and_fit_the_table() -> None:
    with pytest.raises(ConfigError, match="exact_rows"):
        FactorizedEmbeddingShare(dim=4, exact_rows=3)
    with pytest.raises(ConfigError, match="exact_rows"):
        FactorizedEmbeddingShare(dim=4, init="frequency", exact_rows=-1)
    ctx = Context(calib_data=[_ids()], progress=False)
    with pytest.raises(MethodError, match="exact_rows 81 exceeds words"):
        slimkit.apply(Encoder(), FactorizedEmbeddingShare(dim=4, init="frequency", data="calib", exact_rows=81),
                      Targets(include=("words",)), ctx)


def test_refit_unseen_rows_resolves_codes_against_the_moved_projection() -> None:
    torch.manual_seed(5)
    emb = nn.Embedding(80, 32, padding_idx=1)
    counts = torch.ones(80, dtype=torch.float64)
    counts[:10] = 100.0
    fact = FactorizedEmbedding.from_embedding(emb, 4, counts, exact_rows=2)
    with torch.no_grad():  # what recovery does: the shared projection moves, unseen codes stay put
        fact.project.weight.add_(0.3 * torch.randn_like(fact.project.weight))
    seen = torch.zeros(80, dtype=torch.bool)
    seen[:40] = True
    before = fact.embed.weight.detach().clone()
    exact_ids = fact.slot.lt(2).nonzero().flatten().tolist()
    w = emb.weight.detach()  # [80, 32]
    err_before = (fact.dense_weight() - w)[40:].norm(dim=1)  # [40]
    n = refit_unseen_rows(fact, w, seen, "pinv")
    assert n == 40  # rows 40..79; the padding row 1 and the exact rows are among the seen ones here
    assert torch.equal(fact.embed.weight[:40], before[:40])  # seen rows untouched
    err_after = (fact.dense_weight() - w)[40:].norm(dim=1)
    assert (err_after <= err_before + 1e-5).all() and err_after.sum() < 0.9 * err_before.sum()
    # the least-squares code: the residual is orthogonal to the projection's columns
    resid = fact.dense_weight()[40:] - w[40:]  # [40, 32]
    assert torch.allclose(resid @ fact.project.weight, torch.zeros(40, 4), atol=1e-4)
    assert all(i < 40 for i in exact_ids)
    seen[:] = False  # nothing seen: exact rows and the padding row are still left alone
    pad_code = fact.embed.weight[1].detach().clone()
    assert refit_unseen_rows(fact, w, seen, "pinv") == 80 - 1 - 2
    assert torch.equal(fact.embed.weight[1], pad_code)


def test_refit_map_carries_the_trained_shift_and_checks_shapes() -> None:
    torch.manual_seed(6)
    w = torch.randn(60, 8)  # dense rows
    m = torch.randn(8, 3)  # the map training implied: code = w @ m
    codes = refit_codes(w[40:], torch.randn(8, 3), "map", w[:40], w[:40] @ m)  # [20, 3]
    assert torch.allclose(codes, w[40:] @ m, atol=1e-4)
    with pytest.raises(ValueError, match="map"):
        refit_codes(w[40:], torch.randn(8, 3), "map", w[:4], (w @ m)[:4])
    with pytest.raises(ValueError, match="how"):
        refit_codes(w, torch.randn(8, 3), "nearest")
    fact = FactorizedEmbedding.from_embedding(nn.Embedding(80, 32), 4)
    with pytest.raises(ValueError, match="do not match"):
        refit_unseen_rows(fact, torch.randn(80, 16), torch.ones(80, dtype=torch.bool))
