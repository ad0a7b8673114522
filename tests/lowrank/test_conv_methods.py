"""lowrank.tucker / lowrank.cp on Conv2d: the chains, the handler, the Record, replay and errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, MethodError, Recipe, Targets
from slimkit.lowrank import conv_math as cm
from slimkit.lowrank.conv_methods import CpLowrank, TuckerLowrank, cp_chain, tucker_chain

pytestmark = pytest.mark.usefixtures("one_thread_module")


def small_cnn(seed: int = 0) -> nn.Module:
    """Stem 3->16, a 3x3 16->32 with stride 2, a depthwise 3x3, a 1x1, a 3x3 32->32 with dilation 2, head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


X = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(6, 8, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    nn.Conv2d(6, 8, 3, dilation=2, padding="same", padding_mode="reflect"), nn.Conv2d(6, 8, 3, padding="valid"),
])
def test_full_rank_chains_compute_the_same_conv(conv: nn.Conv2d) -> None:
    """At full rank both chains represent the kernel exactly, so stride, padding (and its mode),
    dilation and bias must all land in the right layer."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11, 13)
    c_out, c_in, kh, kw = conv.weight.shape
    with torch.no_grad():
        ref = conv(x)
        t = tucker_chain(conv, c_out - 1, c_in - 1, None)
        assert len(t) == 3  # both 1x1 layers present below full rank
        for r_out, r_in in ((c_out, c_in - 1), (c_out - 1, c_in), (c_out, c_in)):
            chain = tucker_chain(conv, r_out, r_in, cm.tucker2(conv.weight, r_out, r_in))
            if (r_out, r_in) == (c_out, c_in):
                assert len(chain) == 1
            else:
                assert len(chain) == 2  # a full-rank mode gets no 1x1
        full = tucker_chain(conv, c_out, c_in, cm.tucker2(conv.weight, c_out, c_in))
        assert torch.allclose(full(x), ref, atol=1e-5)
        # CP: plant an exact CP kernel, then the chain must reproduce the conv
        g = torch.Generator().manual_seed(1)
        factors = tuple(torch.randn(n, 4, generator=g) for n in (c_out, c_in, kh, kw))
        conv.weight.copy_(cm.cp_full(*factors))
        chain = cp_chain(conv, 4, factors)
        assert [m.groups for m in chain] == [1, 4, 4, 1]
        assert torch.allclose(chain(x), conv(x), atol=1e-4)


def test_tucker_handler_record_and_skips() -> None:
    model = small_cnn()
    out = slimkit.apply(model, TuckerLowrank(rank=12), Targets(), Context(example_inputs=X))
    (rec,) = slimkit.records(out)
    assert set(rec.data["layers"]) == {"2", "8"}
    assert rec.data["layers"]["2"]["ranks"] == [12, 12] and 0 < rec.data["layers"]["2"]["error"] < 1
    assert "grouped" in rec.data["skipped"]["4"] and "1x1" in rec.data["skipped"]["6"]
    assert "not fewer" in rec.data["skipped"]["0"]  # 3 -> 16 at rank 12: 12*3*9 + 16*12 weights > 16*3*9
    assert [d["layer"] for d in rec.data["gate"]] == ["2", "8"]
    assert all(d["kept"] == "factorized" and d["gate"] == "none" for d in rec.data["gate"])
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in out.parameters()))
    assert rec.summary == {"params_before": params[0], "params_after": params[1], "layers_factorized": 2,
                           "layers_declined": 0, "layers_skipped": 3}
    assert isinstance(out[2], nn.Sequential) and [m.kernel_size for m in out[2]] == [(1, 1), (3, 3), (1, 1)]
    assert out[2][1].stride == (2, 2) and out[8][1].dilation == (2, 2) and out[8][-1].bias is None
    assert sum(p.numel() for p in out.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert out(X).shape == (4, 10)


def test_cp_handler_and_params_gate() -> None:
    model = small_cnn()
    out = slimkit.apply(model, CpLowrank(rank=6, iters=30), Targets(include=("2", "8")),
                        Context(example_inputs=X))
    (rec,) = slimkit.records(out)
    assert {n: v["rank"] for n, v in rec.data["layers"].items()} == {"2": 6, "8": 6}
    assert [m.kernel_size for m in out[8]] == [(1, 1), (3, 1), (1, 3), (1, 1)]
    assert out[2][1].stride == (2, 1) and out[2][2].stride == (1, 2)
    # the params gate keeps a layer only where the factors are at least gate_min_ratio times smaller
    gated = slimkit.apply(model, CpLowrank(rank=6, iters=5, gate="params", gate_min_ratio=20.0),
                          Targets(include=("2", "8")), Context())
    (rec,) = slimkit.records(gated)
    ratios = {d["layer"]: d["ratio"] for d in rec.data["gate"]}
    assert all(r is not None for r in ratios.values())
    kept = {d["layer"] for d in rec.data["gate"] if d["kept"] == "factorized"}
    assert kept == {n for n, r in ratios.items() if r >= 20.0} == set(rec.data["layers"]) == {"8"}


def test_latency_gate_records_a_measured_ratio_per_layer() -> None:
    model = small_cnn()
    out = slimkit.apply(model, TuckerLowrank(rank=2, gate="latency", gate_rounds=1, gate_iters=1),
                        Targets(include=("2", "8")), Context(example_inputs=X))
    (rec,) = slimkit.records(out)
    assert [d["layer"] for d in rec.data["gate"]] == ["2", "8"]
    for d in rec.data["gate"]:
        assert d["gate"] == "latency" and d["ratio"] > 0 and d["dense_ms"] > 0 and d["factorized_ms"] > 0
        assert (d["layer"] in rec.data["layers"]) == (d["kept"] == "factorized") != (d["layer"] in rec.data["declined"])
        assert isinstance(out.get_submodule(d["layer"]), nn.Sequential) == (d["kept"] == "factorized")


@pytest.mark.parametrize("kind,options", [("lowrank.tucker", {"energy": 0.8}), ("lowrank.cp", {"iters": 20}),
                                          ("lowrank.tucker", {"ratio": 0.3})])
def test_yaml_recipe_save_restore_bit_exact(kind: str, options: dict, tmp_path: Path) -> None:
    recipe = Recipe.from_yaml(f"name: t\nsteps:\n  - kind: {kind}\n    targets: {{types: [Conv2d]}}\n"
                              f"    with: {options}\n")
    out = recipe.run(small_cnn(), Context(example_inputs=X))
    (rec,) = slimkit.records(out)
    assert rec.data["layers"], rec.data
    slimkit.save(out, tmp_path / "m")
    back = slimkit.restore(tmp_path / "m", model=lambda: small_cnn(seed=5))
    assert [(n, p.shape) for n, p in back.named_parameters()] == [(n, p.shape) for n, p in out.named_parameters()]
    with torch.no_grad():
        assert torch.equal(back(X), out(X))


def test_restore_refuses_a_tampered_rank(tmp_path: Path) -> None:
    import json

    out = slimkit.apply(small_cnn(), TuckerLowrank(rank=4), Targets(include=("2",)), Context())
    slimkit.save(out, tmp_path / "m")
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    man["records"][0]["data"]["layers"]["2"]["ranks"] = [4, 99]
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(slimkit.core.ArtifactError, match="ranks"):
        slimkit.restore(tmp_path / "m", model=small_cnn)
    out = slimkit.apply(small_cnn(), CpLowrank(rank=4, iters=5), Targets(include=("2",)), Context())
    slimkit.save(out, tmp_path / "c")
    man = json.loads((tmp_path / "c" / "manifest.json").read_text())
    man["records"][0]["data"]["layers"]["2"]["rank"] = 10**6  # would allocate a huge chain
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(slimkit.core.ArtifactError, match="does not shrink"):
        slimkit.restore(tmp_path / "c", model=small_cnn)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="at most one of rank, ratio, energy"):
        TuckerLowrank(rank=4, energy=0.9)
    with pytest.raises(ConfigError, match="ratio"):
        CpLowrank(ratio=1.5)
    with pytest.raises(ConfigError, match="iters"):
        CpLowrank(iters=0)
    with pytest.raises(MethodError, match="grouped conv"):  # a depthwise conv named explicitly
        slimkit.apply(small_cnn(), TuckerLowrank(rank=2), Targets(include=("4",)), Context())
    with pytest.raises(MethodError, match="1x1"):
        slimkit.apply(small_cnn(), CpLowrank(rank=2), Targets(include=("6",)), Context())
    with pytest.raises(MethodError, match="select no Conv2d"):
        slimkit.apply(small_cnn(), TuckerLowrank(), Targets(types=("Linear",)), Context())
    with pytest.raises(MethodError, match="example_inputs"):  # a latency gate needs a batch to time with
        slimkit.apply(small_cnn(), TuckerLowrank(rank=2, gate="latency"), Targets(), Context())


@pytest.mark.slow  # torch.export's first call takes seconds
def test_chains_export_with_torch_export() -> None:
    """The replacement is plain Conv2d layers: torch.export takes the model as it is."""
    out = slimkit.apply(small_cnn(), CpLowrank(rank=3, iters=10), Targets(include=("2", "8")), Context())
    with torch.no_grad():
        prog = torch.export.export(out, (X,), strict=False)
        assert torch.allclose(prog.module()(X), out(X), atol=1e-6)
    convs = [n for n in prog.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert len(convs) == 3 + 2 * 4  # the untouched stem, depthwise and 1x1, plus two 4-conv chains
