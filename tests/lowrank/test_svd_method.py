"""lowrank.svd as a method: selection, ranks, skips, data-aware, gating in the Record, save/restore, YAML."""
from __future__ import annotations

import time

import pytest
import torch
import yaml
from torch import nn

import slimkit
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Recipe, Targets
from slimkit.lowrank import svd_method
from slimkit.lowrank.svd_method import SvdLowrank

pytestmark = pytest.mark.usefixtures("one_thread_module")
LINEAR = Targets(types=("Linear",))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()


def correlated(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) * torch.logspace(1, -2, dim)) @ torch.linalg.qr(
        torch.randn(dim, dim, generator=g))[0].T


def tiny_bert(seed: int = 0) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=16)
    return transformers.BertModel(cfg).eval()


def ctx_with(batches: list) -> Context:
    return Context(example_inputs=batches[0], calib_data=batches, progress=False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("options", [{}, {"rank": 2, "ratio": 0.5}, {"ratio": 1.5}, {"energy": 0.0},
                                     {"budget": 1.0}, {"rank": 0}, {"rank": 2, "damping": -1.0}])
def test_config_needs_exactly_one_valid_rank_rule(options: dict) -> None:
    with pytest.raises(ConfigError):
        SvdLowrank.from_dict(options)


def test_mlp_rank_replaces_linears_by_two_thin_ones() -> None:
    model, x = mlp(), torch.randn(8, 32)
    out = slimkit.apply(model, SvdLowrank(rank=8), LINEAR, ctx_with([x]))
    for name, (i, o) in {"0": (32, 64), "2": (64, 16)}.items():
        seq = out.get_submodule(name)
        assert isinstance(seq, nn.Sequential) and [type(m) for m in seq] == [nn.Linear, nn.Linear]
        assert (seq[0].in_features, seq[0].out_features, seq[0].bias) == (i, 8, None)
        assert (seq[1].in_features, seq[1].out_features) == (8, o) and seq[1].bias is not None
    rec = slimkit.records(out)[0]
    assert {n: v["rank"] for n, v in rec.data["layers"].items()} == {"0": 8, "2": 8}
    assert [d["kept"] for d in rec.data["gate"]] == ["factorized", "factorized"]
    assert rec.summary["params_targets_after"] == 8 * 96 + 64 + 8 * 80 + 16
    # the factors are the truncated SVD of the weight (the best rank-8 approximation), bias unchanged
    seq, dense = out.get_submodule("0"), model.get_submodule("0")
    a, b = svd_method.factorize(dense.weight, 8)
    assert torch.allclose(seq[1].weight @ seq[0].weight, a @ b, atol=1e-5)
    assert torch.equal(seq[1].bias, dense.bias)


def test_profile_counts_the_factors() -> None:
    model, x = mlp(), torch.randn(8, 32)
    out = slimkit.apply(model, SvdLowrank(rank=8), LINEAR, ctx_with([x]))
    prof, dense = slimkit.measure.profile(out, x), slimkit.measure.profile(model, x)
    assert prof.macs == 8 * 8 * (32 + 64 + 64 + 16)  # tokens x rank x (in + out), per layer
    assert dense.macs == 8 * (32 * 64 + 64 * 16)
    assert prof.params_total == sum(p.numel() for p in out.parameters()) and prof.bytes_on_disk == 4 * prof.params_total


def test_layers_whose_rank_would_not_shrink_them_stay_dense_and_are_reported() -> None:
    model, x = mlp(), torch.randn(8, 32)
    out = slimkit.apply(model, SvdLowrank(rank=13), LINEAR, ctx_with([x]))  # "2": 64x16 breaks even at 12
    rec = slimkit.records(out)[0]
    assert isinstance(out.get_submodule("2"), nn.Linear) and "break-even rank 12" in rec.data["skipped"]["2"]
    assert set(rec.data["layers"]) == {"0"} and rec.summary["layers_skipped"] == 1


def test_energy_and_ratio_pick_per_layer_ranks() -> None:
    model, x = mlp(), torch.randn(8, 32)
    lo = slimkit.records(slimkit.apply(model, SvdLowrank(energy=0.5), LINEAR, ctx_with([x])))[0]
    hi = slimkit.records(slimkit.apply(model, SvdLowrank(energy=0.8), LINEAR, ctx_with([x])))[0]
    assert lo.data["layers"]["0"]["rank"] < hi.data["layers"]["0"]["rank"]
    rat = slimkit.records(slimkit.apply(model, SvdLowrank(ratio=0.25), LINEAR, ctx_with([x])))[0]
    assert rat.data["layers"]["0"]["rank"] == int(0.25 * 32 * 64 / 96)


def test_budget_keeps_the_fraction_of_the_targets() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(48, 48) for _ in range(4)]).eval()
    out = slimkit.apply(model, SvdLowrank(budget=0.4), LINEAR, ctx_with([torch.randn(4, 48)]))
    weights = sum(m.weight.numel() for m in out.modules() if isinstance(m, nn.Linear))
    assert weights <= 0.4 * 4 * 48 * 48


def test_data_aware_lowers_the_output_error_on_correlated_inputs() -> None:
    model = mlp()
    x = correlated(512, 32)
    ctx = ctx_with([x[:256], x[256:]])
    errs = {}
    for aware in (False, True):
        out = slimkit.apply(model, SvdLowrank(rank=6, data_aware=aware), Targets(include=("0",)), ctx)
        errs[aware] = rel(out(x), model(x))
        assert slimkit.records(out)[0].data["layers"]["0"]["whitened"] is aware
    assert errs[True] < 0.7 * errs[False], errs


def test_data_aware_needs_calibration_data() -> None:
    with pytest.raises(MethodError, match="calib_data"):
        slimkit.apply(mlp(), SvdLowrank(rank=4, data_aware=True), LINEAR, Context(progress=False))


def test_conv_targets_point_to_tucker_and_cp() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(4))
    with pytest.raises(MethodError, match="lowrank.tucker or lowrank.cp"):
        slimkit.apply(cnn, SvdLowrank(rank=2), Targets(types=("Conv2d",)), Context(progress=False))
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.Linear(32, 32))
    out = slimkit.apply(cnn, SvdLowrank(rank=2), Targets(), Context(progress=False))  # "*": convs skipped, said why
    rec = slimkit.records(out)[0]
    assert "lowrank.tucker" in rec.data["skipped"]["0"] and set(rec.data["layers"]) == {"2", "3"}


def test_embedding_becomes_a_factored_table_and_a_linear() -> None:
    torch.manual_seed(0)
    emb = nn.Sequential(nn.Embedding(100, 32, padding_idx=0))
    ids = torch.randint(0, 100, (4, 7))
    out = slimkit.apply(emb, SvdLowrank(rank=8), Targets(types=("Embedding",)), ctx_with([ids]))
    seq = out[0]
    assert isinstance(seq[0], nn.Embedding) and seq[0].weight.shape == (100, 8) and seq[0].padding_idx == 0
    assert isinstance(seq[1], nn.Linear) and seq[1].weight.shape == (32, 8) and seq[1].bias is None
    a, b = svd_method.factorize(emb[0].weight, 8)
    assert torch.allclose(out(ids), (a @ b)[ids], atol=1e-5)
    assert slimkit.records(out)[0].data["layers"]["0"] == {"module": "embedding", "num": 100, "dim": 32,
                                                         "rank": 8, "padding_idx": 0}


def _bert_batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 60, (2, 9), generator=g)} for _ in range(n)]


def test_tiny_bert_data_aware_save_restore_is_bit_exact(tmp_path) -> None:
    batches = _bert_batches()
    targets = Targets(include=("*.layer.*", "embeddings.word_embeddings"), types=("Linear", "Embedding"))
    out = slimkit.apply(tiny_bert(), SvdLowrank(ratio=0.5, data_aware=True, calib_batches=2), targets,
                        ctx_with(batches))
    rec = slimkit.records(out)[0]
    assert "embeddings.word_embeddings" in rec.data["layers"] and len(rec.data["layers"]) == 13
    def weights(m: nn.Module) -> int:  # the budget counts the matrices; biases are unchanged
        return sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.dim() == 2
                   and (".layer." in n or "word_embeddings" in n))

    assert weights(out) <= 0.5 * weights(tiny_bert()) < rec.summary["params_targets_before"]
    slimkit.save(out, tmp_path / "m")
    back = slimkit.restore(tmp_path / "m", model=lambda: tiny_bert(seed=1))
    with torch.no_grad():
        for b in batches:
            assert torch.equal(back(**b).last_hidden_state, out(**b).last_hidden_state)


def test_replay_refuses_a_record_that_does_not_fit(tmp_path) -> None:
    out = slimkit.apply(mlp(), SvdLowrank(rank=4), LINEAR, ctx_with([torch.randn(2, 32)]))
    slimkit.save(out, tmp_path / "m")
    with pytest.raises(ArtifactError, match="record says Linear"):
        slimkit.restore(tmp_path / "m", model=lambda: nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 16)))


def test_yaml_recipe_runs_it() -> None:
    text = yaml.safe_dump({"name": "svd", "steps": [{"kind": "lowrank.svd", "targets": {"types": ["Linear"]},
                                                     "with": {"ratio": 0.3, "gate": "params"}}]})
    recipe = Recipe.from_yaml(text)
    out = recipe.run(mlp(), ctx_with([torch.randn(2, 32)]))
    rec = slimkit.records(out)[0]
    assert rec.kind == "lowrank.svd" and all(d["gate"] == "params" and d["ratio"] > 1 for d in rec.data["gate"])


class _Sleep(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)  # 20 ms: thousands of times this layer's own cost on any CPU
        return x


def test_latency_gate_declines_a_slow_factorization_in_the_record(monkeypatch) -> None:
    """Issue 17, must-show 5: a factorization slower than its dense layer is declined, and the Record says so."""
    plain = svd_method.factored_linear

    def slow_for_first(in_f: int, out_f: int, rank: int, bias: bool, like: torch.Tensor) -> nn.Sequential:
        seq = plain(in_f, out_f, rank, bias, like)
        return nn.Sequential(*seq, _Sleep()) if in_f == 32 else seq  # layer "0" only

    monkeypatch.setattr(svd_method, "factored_linear", slow_for_first)
    model = mlp()
    opts = {"rank": 4, "gate": "latency", "gate_rounds": 3, "gate_iters": 2}
    out = slimkit.apply(model, SvdLowrank(**opts), LINEAR, ctx_with([torch.randn(8, 32)]))
    rec = slimkit.records(out)[0]
    gate = {d["layer"]: d for d in rec.data["gate"]}
    assert gate["0"]["kept"] == "dense" and gate["0"]["ratio"] < 0.5 and gate["0"]["factorized_ms"] >= 15
    assert gate["0"]["runtime"] == "eager" and gate["0"]["dense_ms"] < gate["0"]["factorized_ms"]
    assert type(out.get_submodule("0")) is nn.Linear and "0" not in rec.data["layers"]
    assert rec.summary["layers_declined"] >= 1
    assert gate["2"]["ratio"] is not None and gate["2"]["kept"] == (  # layer "2" decided by its own timing
        "factorized" if gate["2"]["ratio"] >= 1.0 else "dense")
