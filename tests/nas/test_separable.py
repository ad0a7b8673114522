"""block.depthwise_separable: the SVD fit, the pair's structure, the handler, replay, MACs and errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import slimkit
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Recipe, Targets
from slimkit.measure import profile
from slimkit.nas.separable import DepthwiseSeparableBlock, separable_pair
from slimkit.nas.separable_math import relative_error, separable_factors, separable_kernel

pytestmark = pytest.mark.usefixtures("one_thread_module")


def small_cnn(seed: int = 0) -> nn.Module:
    """Stem 3->16, a 3x3 16->32 stride 2, a depthwise 3x3, a 1x1, a 3x3 32->32 dilation 2 (no bias), a transposed conv, head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=2, dilation=2, bias=False), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


X = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def planted_separable(c_out: int, c_in: int, m: int, seed: int = 0) -> torch.Tensor:
    """A [C_out, C_in, 3, 3] kernel that a depthwise (multiplier m) + pointwise pair computes exactly."""
    g = torch.Generator().manual_seed(seed)
    return separable_kernel(torch.randn(c_in * m, 1, 3, 3, generator=g), torch.randn(c_out, c_in * m, 1, 1, generator=g),
                            c_in)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_a_separable_kernel_is_reproduced_exactly(m: int) -> None:
    w = planted_separable(12, 5, m)
    dw, pw = separable_factors(w, m)
    assert dw.shape == (5 * m, 1, 3, 3) and pw.shape == (12, 5 * m, 1, 1)
    assert relative_error(w, separable_kernel(dw, pw, 5)) < 1e-5
    if m > 1:  # one multiplier fewer cannot represent it
        assert relative_error(w, separable_kernel(*separable_factors(w, m - 1), 5)) > 1e-2


def test_full_multiplier_is_exact_and_the_fit_is_the_least_squares_one() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 6, 3, 3, generator=g)
    assert relative_error(w, separable_kernel(*separable_factors(w, 9), 6)) < 1e-5  # min(C_out, k*k) = 8
    errs = [relative_error(w, separable_kernel(*separable_factors(w, m), 6)) for m in range(1, 9)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-5
    # Eckart-Young per slice: random pairs and a perturbed optimum both fit worse than the SVD
    best = errs[0]
    dw, pw = separable_factors(w, 1)
    for _ in range(5):
        rand = separable_kernel(torch.randn(6, 1, 3, 3, generator=g), torch.randn(8, 6, 1, 1, generator=g), 6)
        scale = (rand * w).sum() / (rand * rand).sum()  # even the best scaling of a random pair
        assert relative_error(w, scale * rand) > best
        nudged = separable_kernel(dw + 0.05 * torch.randn(dw.shape, generator=g), pw, 6)
        assert relative_error(w, nudged) > best
    # the error is what the discarded singular values say
    s = torch.linalg.svdvals(w.double().permute(1, 0, 2, 3).reshape(6, 8, 9))  # [C_in, min(8, 9)]
    assert best == pytest.approx(float((s[:, 1:] ** 2).sum().sqrt() / w.double().norm()), rel=1e-6)


def test_factors_are_deterministic_and_validated() -> None:
    w = planted_separable(4, 3, 1) + 0.1
    a, b = separable_factors(w, 2), separable_factors(w.clone(), 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[0].reshape(6, 9).abs().argmax(1) == a[0].reshape(6, 9).argmax(1)).all()  # largest entry positive
    with pytest.raises(ValueError, match="multiplier"):
        separable_factors(w, 0)
    with pytest.raises(ValueError, match="kernel"):
        separable_factors(w[0], 1)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 8, 3, padding=1), nn.Conv2d(6, 8, (3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    nn.Conv2d(6, 8, 3, dilation=2, padding="same", padding_mode="reflect"), nn.Conv2d(6, 8, 3, padding="valid"),
])
def test_pair_computes_the_same_conv_when_the_kernel_is_separable(conv: nn.Conv2d) -> None:
    """Stride, padding (and its mode), dilation and bias must land in the right layer of the pair."""
    c_out, c_in, kh, kw = conv.weight.shape
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        conv.weight.copy_(separable_kernel(torch.randn(c_in * 2, 1, kh, kw, generator=g),
                                           torch.randn(c_out, c_in * 2, 1, 1, generator=g), c_in))
        x = torch.randn(2, 6, 11, 13, generator=g)
        pair = separable_pair(conv, 2)
        assert [m.groups for m in pair] == [6, 1] and pair[1].kernel_size == (1, 1)
        assert torch.allclose(pair(x), conv(x), atol=1e-4)


def test_handler_record_skips_and_macs() -> None:
    model = small_cnn()
    out = slimkit.apply(model, DepthwiseSeparableBlock(), Targets(), Context(example_inputs=X))
    (rec,) = slimkit.records(out)
    assert set(rec.data["layers"]) == {"0", "2", "8"}
    assert all(v["multiplier"] == 1 and 0 < v["error"] < 1 for v in rec.data["layers"].values())
    assert "grouped" in rec.data["skipped"]["4"] and "1x1" in rec.data["skipped"]["6"]
    assert "transposed" in rec.data["skipped"]["10"]
    params = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in out.parameters()))
    assert rec.summary == {"params_before": params[0], "params_after": params[1], "layers_factorized": 3,
                           "layers_declined": 0, "layers_skipped": 3}
    assert out[2][0].stride == (2, 2) and out[8][0].dilation == (2, 2) and out[8][1].bias is None
    assert torch.equal(out[2][1].bias, model[2].bias)
    # MACs: each converted conv costs H*W*C_in*(k*k + C_out) instead of H*W*C_out*C_in*k*k
    before, after = profile(model, X).macs, profile(out, X).macs
    hw = {"0": 12 * 12, "2": 6 * 6, "8": 6 * 6}
    shapes = {n: model[int(n)].weight.shape for n in hw}
    saved = sum(hw[n] * (o * i * 9 - i * (9 + o)) for n, (o, i, _, _) in shapes.items())
    assert before - after == 4 * saved  # batch 4


def test_multiplier_and_params_gate() -> None:
    model = small_cnn()
    out = slimkit.apply(model, DepthwiseSeparableBlock(multiplier=3), Targets(include=("2", "8")), Context())
    (rec,) = slimkit.records(out)
    assert {n: v["multiplier"] for n, v in rec.data["layers"].items()} == {"2": 3, "8": 3}
    assert out[8][0].out_channels == 96 and out[8][1].in_channels == 96
    one = slimkit.records(slimkit.apply(model, DepthwiseSeparableBlock(), Targets(include=("8",)), Context()))[0]
    assert rec.data["layers"]["8"]["error"] < one.data["layers"]["8"]["error"]
    # a multiplier beyond min(C_out, k*k) is capped; where the pair would not shrink, the layer is skipped
    capped = slimkit.apply(model, DepthwiseSeparableBlock(multiplier=50), Targets(types=("Conv2d",)), Context())
    (rec,) = slimkit.records(capped)
    assert "not fewer" in rec.data["skipped"]["8"] and "not fewer" in rec.data["skipped"]["0"]
    gated = slimkit.apply(model, DepthwiseSeparableBlock(gate="params", gate_min_ratio=6.0),
                          Targets(include=("0", "2", "8")), Context())
    (rec,) = slimkit.records(gated)
    ratios = {d["layer"]: d["ratio"] for d in rec.data["gate"]}
    kept = {d["layer"] for d in rec.data["gate"] if d["kept"] == "factorized"}
    assert kept == {n for n, r in ratios.items() if r >= 6.0} == set(rec.data["layers"]) == {"2", "8"}
    assert isinstance(gated[0], nn.Conv2d)


@pytest.mark.parametrize("options", [{}, {"multiplier": 2}])
def test_yaml_recipe_save_restore_bit_exact(options: dict, tmp_path: Path) -> None:
    recipe = Recipe.from_yaml("name: t\nsteps:\n  - kind: block.depthwise_separable\n"
                              f"    targets: {{types: [Conv2d]}}\n    with: {options}\n")
    out = recipe.run(small_cnn(), Context(example_inputs=X))
    slimkit.save(out, tmp_path / "m")
    back = slimkit.restore(tmp_path / "m", model=lambda: small_cnn(seed=5))
    assert [(n, p.shape) for n, p in back.named_parameters()] == [(n, p.shape) for n, p in out.named_parameters()]
    with torch.no_grad():
        assert torch.equal(back(X), out(X))


@pytest.mark.parametrize("field,value,match", [("multiplier", 10**6, "multiplier"), ("multiplier", "2", "multiplier"),
                                               ("name", "4", "grouped"), ("name", "nope", "no layer")])
def test_restore_refuses_a_tampered_record(field: str, value: object, match: str, tmp_path: Path) -> None:
    out = slimkit.apply(small_cnn(), DepthwiseSeparableBlock(), Targets(include=("2",)), Context())
    slimkit.save(out, tmp_path / "m")
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    layers = man["records"][0]["data"]["layers"]
    if field == "name":
        layers[value] = layers.pop("2")
    else:
        layers["2"][field] = value
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match=match):
        slimkit.restore(tmp_path / "m", model=small_cnn)


def test_errors_name_the_layer() -> None:
    with pytest.raises(ConfigError, match="multiplier"):
        DepthwiseSeparableBlock(multiplier=0)
    for name, match in (("4", "'4'.*grouped"), ("6", "'6'.*1x1"), ("10", "'10'.*transposed")):
        with pytest.raises(MethodError, match=match):
            slimkit.apply(small_cnn(), DepthwiseSeparableBlock(), Targets(include=(name,)), Context())
    with pytest.raises(MethodError, match="select no Conv2d"):
        slimkit.apply(small_cnn(), DepthwiseSeparableBlock(), Targets(types=("Linear",)), Context())
    with pytest.raises(MethodError, match="example_inputs"):
        slimkit.apply(small_cnn(), DepthwiseSeparableBlock(gate="latency"), Targets(), Context())


def test_latency_gate_records_a_measured_ratio() -> None:
    out = slimkit.apply(small_cnn(), DepthwiseSeparableBlock(gate="latency", gate_rounds=1, gate_iters=1),
                        Targets(include=("2", "8")), Context(example_inputs=X))
    (rec,) = slimkit.records(out)
    for d in rec.data["gate"]:
        assert d["gate"] == "latency" and d["ratio"] > 0 and d["dense_ms"] > 0 and d["factorized_ms"] > 0
        assert (d["layer"] in rec.data["layers"]) == (d["kept"] == "factorized")
        assert isinstance(out.get_submodule(d["layer"]), nn.Sequential) == (d["kept"] == "factorized")


def test_pair_matches_functional_conv_after_the_fit() -> None:
    """The swapped model computes exactly depthwise-then-pointwise with the recorded factors."""
    model = small_cnn()
    out = slimkit.apply(model, DepthwiseSeparableBlock(multiplier=2), Targets(include=("2",)), Context())
    dw, pw = separable_factors(model[2].weight, 2)
    x = torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = F.conv2d(F.conv2d(x, dw, stride=2, padding=1, groups=16), pw, model[2].bias)
        assert torch.allclose(out[2](x), ref, atol=1e-6)
