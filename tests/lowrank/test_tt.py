"""lowrank.tt: TT-SVD math, TT-Linear / TT-embedding layers, the kind end to end."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit import measure
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Recipe, Targets
from slimkit.lowrank.tt import TtLowrank
from slimkit.lowrank.tt_layers import TtEmbedding, TtLinear
from slimkit.lowrank.tt_math import (
    balanced_factors,
    factorize,
    max_ranks,
    tt_full,
    tt_matmul,
    tt_matmul_macs,
    tt_params,
    tt_rows,
    tt_rows_macs,
    tt_svd,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")


class Tagger(nn.Module):
    """ids -> embedding (with a padding row) -> Linear -> ReLU -> Linear: both TT targets."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(60, 24, padding_idx=0)
        self.fc = nn.Linear(24, 36)
        self.out = nn.Linear(36, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.emb(ids))))


def _ids(seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(seed))
    ids[:, -1] = 0  # padding positions
    return ids


def _data_bytes(file: Path) -> int:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    json.loads(raw[8:8 + n])
    return len(raw) - 8 - n


# -- pure math ----------------------------------------------------------------------------


def test_factorize_is_exact_when_even_and_pads_otherwise() -> None:
    assert balanced_factors(384, 3) == (8, 8, 6)
    assert factorize(384, 3) == (8, 8, 6) and factorize(1536, 3) == (16, 12, 8)
    f = factorize(30522, 3)  # 2 * 3 * 5087: padded to a product of three even factors
    assert len(f) == 3 and 30522 <= math.prod(f) <= 30522 * 1.01 and max(f) <= 1.5 * 30522 ** (1 / 3) + 1
    assert factorize(7, 2)[0] * factorize(7, 2)[1] >= 7


def test_tt_svd_exact_at_full_rank_and_error_falls_with_rank() -> None:
    torch.manual_seed(0)
    m = torch.randn(60, 32, dtype=torch.float64)
    rf, cf = (4, 3, 5), (2, 4, 4)
    cores = tt_svd(m, rf, cf, max_ranks(rf, cf))
    assert [tuple(c.shape) for c in cores] == [(1, 4, 2, 8), (8, 3, 4, 20), (20, 5, 4, 1)]
    assert torch.allclose(tt_full(cores), m, atol=1e-10)
    errors = [(tt_full(tt_svd(m, rf, cf, [r, r])) - m).norm().item() for r in (1, 2, 4, 8, 16)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert tt_params(rf, cf, [4, 4]) == sum(c.numel() for c in tt_svd(m, rf, cf, [4, 4]))


def test_tt_svd_pads_rows_and_columns_with_zeros() -> None:
    torch.manual_seed(1)
    m = torch.randn(11, 7, dtype=torch.float64)
    rf, cf = factorize(11, 2), factorize(7, 2)  # 11 is prime: padded to 4 x 3; 7 to 4 x 2
    full = tt_full(tt_svd(m, rf, cf, max_ranks(rf, cf)))
    assert full.shape == (math.prod(rf), math.prod(cf))
    assert (rf, cf) == ((4, 3), (4, 2))
    assert torch.allclose(full[:11, :7], m, atol=1e-10)
    assert full[11:].abs().max() < 1e-10 and full[:, 7:].abs().max() < 1e-10


def test_contractions_equal_the_dense_products_at_any_rank() -> None:
    torch.manual_seed(2)
    rf, cf = (3, 4, 2), (2, 3, 5)
    cores = tt_svd(torch.randn(24, 30, dtype=torch.float64), rf, cf, [3, 2])  # truncated: still a TT
    full = tt_full(cores)
    x = torch.randn(6, 24, dtype=torch.float64)
    assert torch.allclose(tt_matmul(x, cores), x @ full, atol=1e-10)
    ids = torch.tensor([0, 23, 5, 5, 17])
    assert torch.allclose(tt_rows(cores, ids, rf), full[ids], atol=1e-10)


# -- layers ----------------------------------------------------------------------------------


def test_tt_linear_at_full_rank_is_the_linear_including_padded_dims() -> None:
    torch.manual_seed(3)
    dense = nn.Linear(10, 7)
    rf, cf = list(factorize(10, 2)), list(factorize(7, 2))
    tt = TtLinear.from_linear(dense, rf, cf, max_ranks(rf, cf))
    x = torch.randn(2, 3, 10)
    assert torch.allclose(tt(x), dense(x), atol=1e-5)
    assert torch.allclose(tt.dense_weight(), dense.weight, atol=1e-5)


def test_tt_embedding_lookup_is_the_reconstructed_table_rows_and_keeps_the_padding_row() -> None:
    torch.manual_seed(4)
    emb = nn.Embedding(60, 24, padding_idx=0)
    with torch.no_grad():
        emb.weight[0] = torch.randn(24)  # a non-zero padding row (MiniLM's is) is kept exactly
    rf, cf = list(factorize(60, 3)), list(factorize(24, 3))
    tt = TtEmbedding.from_embedding(emb, rf, cf, [2, 2])
    ids = _ids()
    table = tt.dense_weight()
    assert torch.allclose(tt(ids), table[ids], atol=1e-6)
    assert torch.equal(tt(torch.tensor([0])), emb.weight[:1].detach())
    full = TtEmbedding.from_embedding(emb, rf, cf, max_ranks(rf, cf))
    assert torch.allclose(full(ids), emb(ids), atol=1e-5)


# -- the kind ----------------------------------------------------------------------------------


def test_apply_save_restore_is_bit_exact_and_profile_counts_the_contractions(tmp_path: Path) -> None:
    model = Tagger(0).eval()
    ids = _ids()
    cfg = TtLowrank(d=2, max_rank=3)
    out = slimkit.apply(model, cfg, Targets(include=("emb", "fc")), Context())
    assert isinstance(out.emb, TtEmbedding) and isinstance(out.fc, TtLinear) and isinstance(out.out, nn.Linear)
    (rec,) = slimkit.records(out)
    assert rec.summary["layers_factorized"] == 2 and rec.summary["params_after"] < rec.summary["params_before"]
    assert [d["kept"] for d in rec.data["gate"]] == ["factorized", "factorized"]
    with torch.no_grad():
        expected = out(ids)
    folder = slimkit.save(out, tmp_path / "tt", spec="x")
    restored = slimkit.restore(folder, model=lambda: Tagger(1))
    with torch.no_grad():
        assert torch.equal(restored(ids), expected)
    prof = measure.profile(out, ids)
    assert prof.bytes_on_disk == _data_bytes(folder / "model.safetensors")
    assert prof.params_total == sum(p.numel() for p in out.parameters())
    n = ids.numel()
    e, f = out.emb, out.fc
    want = (tt_rows_macs(n, e.col_factors, e.ranks) + tt_matmul_macs(n, f.row_factors, f.col_factors, f.ranks)
            + n * 36 * 5)
    assert prof.macs == want, (prof.macs, want)


def test_yaml_recipe_with_ranks_and_factors() -> None:
    recipe = Recipe.from_yaml("""
name: tt
steps:
  - kind: lowrank.tt
    targets: {include: ["fc"]}
    with: {d: 2, ranks: [2], factors: [[6, 4], [6, 6]]}
""")
    out = recipe.run(Tagger(0), Context())
    assert out.fc.ranks == [2] and out.fc.row_factors == [6, 4] and out.fc.col_factors == [6, 6]
    assert [r.kind for r in slimkit.records(out)] == ["lowrank.tt"]


def test_gate_params_keeps_the_dense_layer_where_tt_is_larger() -> None:
    out = slimkit.apply(Tagger(0), TtLowrank(d=2, max_rank=8, gate="params", gate_min_ratio=1.5),
                        Targets(include=("fc", "out")), Context())
    kept = {d["layer"]: d["kept"] for d in slimkit.records(out)[0].data["gate"]}
    assert kept == {"fc": "factorized", "out": "dense"}  # 36 x 5 as a rank-8 TT is bigger than dense
    assert isinstance(out.out, nn.Linear) and list(slimkit.records(out)[0].data["layers"]) == ["fc"]


def test_unsupported_targets_and_bad_options_are_slimkit_errors() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(MethodError, match="Conv2d"):
        slimkit.apply(conv, TtLowrank(), Targets(), Context())
    with pytest.raises(MethodError, match="do not cover"):
        slimkit.apply(Tagger(0), TtLowrank(d=2, factors=((2, 2), (6, 6))), Targets(include=("fc",)), Context())
    with pytest.raises(MethodError, match="max_norm"):
        slimkit.apply(nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)), TtLowrank(d=2), Targets(), Context())
    with pytest.raises(ConfigError, match="ranks"):
        TtLowrank(d=3, ranks=(4,))
    with pytest.raises(ConfigError, match="factors"):
        TtLowrank(d=2, factors=((2, 2, 2), (2, 2)))
    with pytest.raises(ConfigError, match="d"):
        TtLowrank(d=1)


def test_tampered_record_is_an_artifact_error(tmp_path: Path) -> None:
    out = slimkit.apply(Tagger(0), TtLowrank(d=2, max_rank=2), Targets(include=("fc",)), Context())
    folder = slimkit.save(out, tmp_path / "tt", spec="x")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["records"][0]["data"]["layers"]["fc"]["row_factors"] = [2, 2]  # covers 4 of 24 inputs
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="do not cover"):
        slimkit.restore(folder, model=lambda: Tagger(1))


def test_gate_latency_times_each_layer_and_the_model_follows_its_verdict() -> None:
    ids = _ids()
    cfg = TtLowrank(d=2, max_rank=3, gate="latency", gate_rounds=2, gate_iters=2)
    out = slimkit.apply(Tagger(0), cfg, Targets(include=("emb", "fc")), Context(example_inputs=ids))
    rec = slimkit.records(out)[0]
    for d in rec.data["gate"]:
        assert d["gate"] == "latency" and d["dense_ms"] > 0 and d["factorized_ms"] > 0
        assert d["ratio"] == pytest.approx(d["dense_ms"] / d["factorized_ms"], rel=0.05)
        module = out.get_submodule(d["layer"])
        assert isinstance(module, (TtEmbedding, TtLinear)) == (d["kept"] == "factorized")
        assert (d["layer"] in rec.data["layers"]) == (d["kept"] == "factorized")
    with pytest.raises(MethodError, match="example_inputs"):
        slimkit.apply(Tagger(0), cfg, Targets(include=("fc",)), Context())
