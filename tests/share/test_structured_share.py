"""share.hashed / share.circulant / share.toeplitz: index maps, projection, forward, record + replay, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Recipe, Targets, load_weights
from slimkit.share.structured import CirculantShare, HashedShare, ToeplitzShare
from slimkit.share.structured_layers import CirculantLinear, HashedLinear, ToeplitzLinear
from slimkit.share.tying import circulant_index, hashed_index, project, toeplitz_index

pytestmark = pytest.mark.usefixtures("one_thread_module")

# (factory, signed): every layer kind at a shape that is not a multiple of the block (padding)
LAYERS = {
    "circulant-fft": (lambda: CirculantLinear(13, 10, 4, "fft"), False),
    "circulant-dense": (lambda: CirculantLinear(13, 10, 4, "dense"), False),
    "circulant-one-block": (lambda: CirculantLinear(12, 12, 12, "fft"), False),
    "toeplitz-fft": (lambda: ToeplitzLinear(13, 10, 3, "fft"), False),
    "toeplitz-dense": (lambda: ToeplitzLinear(13, 10, 3, "dense"), False),
    "hashed": (lambda: HashedLinear(13, 10, 17, seed=5), True),
}


def _random(layer: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return layer.eval()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 10)).eval()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_equals_the_materialized_dense_product(name: str) -> None:
    layer = _random(LAYERS[name][0]())
    x = torch.randn(2, 3, layer.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = nn.functional.linear(x, layer.materialize(), layer.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_projection_recovers_a_weight_that_already_has_the_structure(name: str) -> None:
    factory, signed = LAYERS[name]
    layer = _random(factory())
    dense = layer.materialize().detach()
    w = project(dense, layer.index, layer.weight.numel(), signed=signed)
    read = torch.zeros(layer.weight.numel(), dtype=torch.bool)
    read[layer.index.reshape(-1) % layer.weight.numel()] = True  # parameters no entry reads project to 0
    torch.testing.assert_close(w[read], layer.weight.detach()[read], rtol=0, atol=1e-6)
    assert torch.all(w[~read] == 0)


@pytest.mark.parametrize("kind", ["circulant", "toeplitz", "hashed"])
def test_projection_is_the_least_squares_fit(kind: str) -> None:
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(7, 9, generator=gen, dtype=torch.float64)
    if kind == "circulant":
        index, size, signed = circulant_index(7, 9, 4), 2 * 3 * 4, False
    elif kind == "toeplitz":
        index, size, signed = toeplitz_index(7, 9, 4), 2 * 3 * 7, False
    else:
        index, size, signed = hashed_index(7, 9, 11, seed=1), 11, True
    flat = index.reshape(-1)
    design = torch.zeros(flat.numel(), size, dtype=torch.float64)  # [entries, params]
    design[torch.arange(flat.numel()), flat % size] = torch.where(flat >= size, -1.0, 1.0).double() if signed else 1.0
    best = torch.linalg.lstsq(design, weight.reshape(-1, 1), driver="gelsd").solution.reshape(-1)
    got = project(weight, index, size, signed=signed)
    err = lambda w: float(((design @ w) - weight.reshape(-1)).square().sum())  # noqa: E731
    assert err(got) == pytest.approx(err(best), rel=1e-9)


def test_hash_is_deterministic_spread_and_signed() -> None:
    a = hashed_index(64, 48, 100, seed=7)
    assert torch.equal(a, hashed_index(64, 48, 100, seed=7))
    assert not torch.equal(a, hashed_index(64, 48, 100, seed=8))
    assert a.min() >= 0 and a.max() < 200
    counts = torch.bincount(a.reshape(-1) % 100, minlength=100)
    assert counts.min() > 0 and counts.max() < 3 * counts.float().mean()  # no empty or hugely overfull bucket
    negative = (a >= 100).float().mean()
    assert 0.4 < negative < 0.6
    # the map is pure int64 arithmetic: pinned so that a change to it (which would break every saved
    # artifact's replay) fails here on any CPU
    assert hashed_index(2, 3, 5, seed=0).tolist() == [[5, 8, 4], [8, 5, 9]]


def test_apply_projects_and_shrinks_with_gate_none() -> None:
    model = mlp()
    out = slimkit.apply(model, CirculantShare(block=8), Targets(types=("Linear",)))
    assert isinstance(out[0], CirculantLinear) and isinstance(out[2], CirculantLinear)
    torch.testing.assert_close(out[2].bias, model[2].bias)
    (rec,) = slimkit.records(out)
    assert rec.data["layers"]["0"] == {"in": 24, "out": 40, "bias": True, "block": 8, "product": "fft"}
    assert rec.summary["params_after"] == 5 * 3 * 8 + 40 + 2 * 5 * 8 + 10
    assert [d["kept"] for d in rec.data["gate"]] == ["factorized", "factorized"]


def test_params_gate_keeps_the_dense_layer_that_would_not_shrink_enough(tmp_path: Path) -> None:
    model = mlp()
    out = slimkit.apply(model, HashedShare(size=200, seed=4, gate="params", gate_min_ratio=3.0))
    rec = slimkit.records(out)[0]
    verdicts = {d["layer"]: d["kept"] for d in rec.data["gate"]}
    assert verdicts == {"0": "factorized", "2": "dense"}  # 1000/240 >= 3; 410/210 < 3
    assert isinstance(out[0], HashedLinear) and type(out[2]) is nn.Linear
    assert set(rec.data["layers"]) == {"0"} and rec.data["layers"]["0"]["seed"] == 4
    slimkit.save(out, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: mlp(1))
    assert isinstance(restored[0], HashedLinear) and type(restored[2]) is nn.Linear
    x = torch.randn(6, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(restored(x), out(x))


def test_saved_file_holds_the_small_vector_only(tmp_path: Path) -> None:
    out = slimkit.apply(mlp(), HashedShare(ratio=0.1))
    slimkit.save(out, tmp_path / "m")
    keys = set(load_weights(tmp_path / "m"))
    assert keys == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert load_weights(tmp_path / "m")["0.weight"].numel() == 96  # round(0.1 * 960)


def test_yaml_recipe_runs() -> None:
    recipe = Recipe.from_yaml("name: t\nsteps:\n  - kind: share.toeplitz\n    with: {block: 4, product: fft}\n"
                              "    targets: {types: [Linear]}\n")
    out = recipe.run(mlp(), Context(progress=False))
    assert isinstance(out[0], ToeplitzLinear) and out[0].product == "fft" and out[0].block == 4


@pytest.mark.parametrize("cls,options,key", [
    (HashedShare, {"ratio": 0.0}, "ratio"), (HashedShare, {"size": 0}, "size"),
    (CirculantShare, {"block": 1}, "block"), (ToeplitzShare, {"product": "gemm"}, "product"),
    (CirculantShare, {"gate_min_ratio": 0}, "gate_min_ratio"),
])
def test_bad_options_name_the_key(cls: type, options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        cls.from_dict(options)


def test_no_linear_selected_is_a_method_error() -> None:
    with pytest.raises(MethodError, match="no nn.Linear"):
        slimkit.apply(mlp(), HashedShare(), Targets(types=("Conv2d",)))


def test_fft_layers_cannot_be_gated_on_onnx_runtime() -> None:
    with pytest.raises(MethodError, match="gate_runtime: pt2"):
        slimkit.apply(mlp(), CirculantShare(block=8, gate="latency", gate_runtime="onnx"),
                      ctx=Context(example_inputs=torch.randn(2, 24)))


def test_exports(tmp_path: Path) -> None:
    """torch.export traces every variant; slimkit's ONNX exporter refuses the FFT product clearly."""
    from slimkit.export.onnx import export_onnx

    x = torch.randn(3, 24, generator=torch.Generator().manual_seed(4))
    for config in (CirculantShare(block=8), ToeplitzShare(block=8, product="fft"), HashedShare()):
        out = slimkit.apply(mlp(), config)
        program = torch.export.export(out, (x,), strict=False)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), out(x))
    with pytest.raises(MethodError, match="product: dense"):
        export_onnx(slimkit.apply(mlp(), CirculantShare(block=8)), x, tmp_path / "c.onnx")
    path = export_onnx(slimkit.apply(mlp(), CirculantShare(block=8, product="dense")), x, tmp_path / "d.onnx")
    assert path.is_file()


def test_tampered_record_is_an_artifact_error(tmp_path: Path) -> None:
    import json

    slimkit.save(slimkit.apply(mlp(), CirculantShare(block=8)), tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["records"][0]["data"]["layers"]["0"]["block"] = -3
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="block"):
        slimkit.restore(tmp_path / "m", model=mlp)


@pytest.mark.parametrize("min_ratio,kept", [(1e-6, "factorized"), (1e6, "dense")])
def test_latency_gate_records_measured_ratios_and_follows_the_threshold(min_ratio: float, kept: str) -> None:
    """The gate times both layers and keeps by ``gate_min_ratio`` (thresholds no timing can cross)."""
    config = CirculantShare(block=8, gate="latency", gate_runtime="pt2", gate_min_ratio=min_ratio, gate_rounds=1,
                            gate_iters=1)
    out = slimkit.apply(mlp(), config, ctx=Context(example_inputs=torch.randn(4, 24)))
    rec = slimkit.records(out)[0]
    assert [d["kept"] for d in rec.data["gate"]] == [kept, kept]
    for d in rec.data["gate"]:
        assert d["runtime"] == "pt2" and d["ratio"] > 0 and d["dense_ms"] > 0 and d["factorized_ms"] > 0
    assert set(rec.data["layers"]) == ({"0", "2"} if kept == "factorized" else set())
    assert rec.summary["layers_declined"] == (2 if kept == "dense" else 0)


@pytest.mark.slow
def test_fft_layers_convert_with_the_dynamo_onnx_exporter(tmp_path: Path) -> None:
    """What the MethodError recommends works: torch.onnx.export(dynamo=True) writes ONNX DFT ops."""
    import onnxruntime

    layer = _random(CirculantLinear(40, 24, 8, "fft"))
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    program = torch.onnx.export(layer, (x,), dynamo=True, opset_version=18, verbose=False)
    assert program is not None
    program.save(str(tmp_path / "c.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "c.onnx"))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), layer(x), rtol=1e-4, atol=1e-4)
