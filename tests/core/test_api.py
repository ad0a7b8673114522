from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ArtifactError, MethodError, Targets
from slimkit.core.encoding import csr_decode, csr_encode, csr_nbytes, tensor_nbytes
from slimkit.prune import MagnitudePrune


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 10))


def test_apply_copies_by_default_and_inplace_on_request() -> None:
    m = _net()
    before = m[4].weight.clone()
    out = slimkit.apply(m, MagnitudePrune(sparsity=0.7), Targets(types=("Linear",)))
    assert out is not m and torch.equal(m[4].weight, before)
    assert slimkit.records(m) == []
    rec = slimkit.records(out)[0]
    assert rec.kind == "prune.magnitude" and rec.summary["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert rec.targets["types"] == ["Linear"]
    same = slimkit.apply(m, MagnitudePrune(sparsity=0.5), inplace=True)
    assert same is m and (m[4].weight == 0).float().mean() == pytest.approx(0.5, abs=1e-3)


def test_global_vs_layer_scope_and_bias_exempt() -> None:
    m = _net()
    with torch.no_grad():
        m[6].weight.mul_(100)  # the last layer has much larger weights
    g = slimkit.apply(m, MagnitudePrune(sparsity=0.5, scope="global"), Targets(types=("Linear",)))
    layer = slimkit.apply(m, MagnitudePrune(sparsity=0.5), Targets(types=("Linear",)))
    assert (g[6].weight == 0).float().mean() < 0.02  # global threshold spares the large layer
    assert (layer[6].weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert (g[4].bias == 0).sum() == 0  # biases exempt by default
    with pytest.raises(MethodError, match="select no weight"):
        slimkit.apply(m, MagnitudePrune(), Targets(types=("Embedding",)))


def test_save_restore_reproduces_outputs_exactly(tmp_path: Path) -> None:
    pruned = slimkit.apply(_net(), MagnitudePrune(sparsity=0.9, scope="global"), Targets(types=("Conv2d", "Linear")))
    pruned.eval()
    slimkit.save(pruned, tmp_path, spec="test:net")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["model_spec"] == "test:net" and manifest["records"][0]["kind"] == "prune.magnitude"
    again = slimkit.restore(tmp_path, model=_net)
    x = torch.randn(4, 1, 6, 6)
    assert torch.equal(again(x), pruned(x))
    assert slimkit.records(again)[0].config["sparsity"] == 0.9
    # Sparse layers are stored as CSR: the file is much smaller than dense float32.
    dense_bytes = sum(t.numel() * 4 for t in pruned.state_dict().values() if t.is_floating_point())
    assert os.path.getsize(tmp_path / "model.safetensors") < 0.35 * dense_bytes


def test_tied_weights_are_stored_once(tmp_path: Path) -> None:
    emb = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    slimkit.save(model, tmp_path, spec="x")
    fresh = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50, bias=False))
    fresh[1].weight = fresh[0].weight
    again = slimkit.restore(tmp_path, model=fresh)
    assert torch.equal(again[1].weight, emb.weight)
    assert os.path.getsize(tmp_path / "model.safetensors") < 50 * 16 * 4 * 1.5


def test_corrupt_artifacts_raise_artifact_error(tmp_path: Path) -> None:
    slimkit.save(_net(), tmp_path, spec="x")
    weights = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ArtifactError, match="model.safetensors is corrupt or was modified"):
        slimkit.restore(tmp_path, model=_net)
    (tmp_path / "manifest.json").write_text('{"records": [')
    with pytest.raises(ArtifactError, match="manifest.json is corrupt"):
        slimkit.restore(tmp_path, model=_net)
    with pytest.raises(ArtifactError, match="not found"):
        slimkit.restore(tmp_path / "missing")


def test_wrong_architecture_fails_strict_load(tmp_path: Path) -> None:
    slimkit.save(_net(), tmp_path, spec="x")
    with pytest.raises(ArtifactError, match="do not fit"):
        slimkit.restore(tmp_path, model=lambda: nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("shape, density", [((64, 700), 0.05), ((16, 8, 3, 3), 0.3), ((1000,), 0.01), ((4, 4), 1.0)])
def test_csr_round_trip_and_byte_account(shape: tuple[int, ...], density: float) -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    parts = csr_encode(t)
    assert torch.equal(csr_decode(parts, tuple(t.shape)), t)
    assert sum(p.numel() * p.element_size() for p in parts.values()) == csr_nbytes(t)
    assert tensor_nbytes(t) == min(t.numel() * 4, csr_nbytes(t)) or t.numel() < 64


def test_csr_inserts_fillers_for_long_gaps() -> None:
    t = torch.zeros(2, 1000)
    t[0, 999] = 1.0  # 999 zeros before it: 3 fillers of 256 skips, then skip 231
    parts = csr_encode(t)
    assert parts["values"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert parts["skips"].tolist() == [255, 255, 255, 999 - 3 * 256]
    assert torch.equal(csr_decode(parts, (2, 1000)), t)


def test_subpackages_are_reachable_from_the_top_level() -> None:
    assert slimkit.zoo.load is not None and slimkit.measure.profile is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        slimkit.nope  # noqa: B018
