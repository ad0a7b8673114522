"""profile(): size account vs the saved file, tied weights, memory figures, per-layer table."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.encoding import tensor_nbytes
from slimkit.measure import Profile, profile
from slimkit.measure.profile import state_nbytes


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.BatchNorm1d(32), nn.Linear(32, 10))


def _prune_(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude weights of every Linear (plain magnitude pruning)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                w = m.weight
                k = int(sparsity * w.numel())
                thresh = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= thresh] = 0.0


def _safetensors_data_bytes(file: Path) -> int:
    """File size minus the safetensors header (8-byte length + JSON)."""
    raw = file.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    json.loads(raw[8:8 + header_len])  # it is a real header
    return len(raw) - 8 - header_len


def test_bytes_on_disk_matches_saved_file_dense_and_pruned(tmp_path: Path) -> None:
    model = _mlp()
    x = torch.randn(4, 64)
    dense = profile(model, x)
    dense_file = slimkit.save(model, tmp_path / "dense", spec="x") / "model.safetensors"
    _prune_(model, 0.9)
    pruned = profile(model, x)
    pruned_file = slimkit.save(model, tmp_path / "pruned", spec="x") / "model.safetensors"
    assert dense.bytes_on_disk == _safetensors_data_bytes(dense_file)
    assert pruned.bytes_on_disk == _safetensors_data_bytes(pruned_file)
    assert pruned.bytes_on_disk < 0.3 * dense.bytes_on_disk  # CSR pays off at 90 %
    n_weights = 64 * 128 + 128 * 32 + 32 * 10
    zeros = dense.params_nonzero - pruned.params_nonzero
    assert abs(zeros - 0.9 * n_weights) <= 3
    assert pruned.params_total == dense.params_total
    assert pruned.macs == dense.macs  # dense kernels still do the work


def test_state_nbytes_agrees_with_tensor_nbytes_at_every_sparsity() -> None:
    torch.manual_seed(1)
    for density in (1.0, 0.6, 0.45, 0.3, 0.05, 0.0):
        w = torch.randn(40, 70) * (torch.rand(40, 70) < density)
        assert state_nbytes({"w": w}) == tensor_nbytes(w), density


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 100, bias=False)
        self.head.weight = self.emb.weight  # tied, as in language models

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.emb(ids))))


def test_tied_weights_counted_once(tmp_path: Path) -> None:
    model = Tied()
    ids = torch.randint(0, 100, (2, 5))
    prof = profile(model, ids)
    assert prof.params_total == 100 * 16 + 16 * 16 + 16
    folder = slimkit.save(model, tmp_path / "tied", spec="x")
    assert prof.bytes_on_disk == _safetensors_data_bytes(folder / "model.safetensors")
    assert prof.macs == 10 * 16 * 16 + 10 * 16 * 100


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(6, 4)
        self.unused = nn.Linear(3, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.drop(self.a(x)) + self.b(y)


def test_tuple_and_dict_inputs_and_training_flags_restored() -> None:
    model = TwoInputs().train()
    model.b.eval()  # mixed flags must come back as they were
    x, y = torch.randn(3, 8), torch.randn(3, 6)
    p1 = profile(model, (x, y))
    p2 = profile(model, {"x": x, "y": y})
    assert p1.macs == p2.macs == 3 * 8 * 4 + 3 * 6 * 4
    assert model.training and model.a.training and not model.b.training and model.drop.training
    # eval mode during the pass: dropout is the identity, so no bernoulli/mask op ran
    assert p1.activation_write_bytes == p2.activation_write_bytes


def test_layers_table_attributes_ops_and_sums_to_total() -> None:
    model = TwoInputs()
    prof = profile(model, (torch.randn(3, 8), torch.randn(3, 6)))
    rows = {r.name: r for r in prof.layers}
    assert rows["a"].macs == 3 * 8 * 4 and rows["a"].output_shape == [3, 4] and rows["a"].params == 36
    assert rows["b"].macs == 3 * 6 * 4 and rows["b"].calls == 1
    assert rows["unused"].calls == 0 and rows["unused"].output_shape is None
    assert rows[""].access_bytes > 0  # the residual add runs in the root's own forward
    assert sum(r.macs for r in prof.layers) == prof.macs
    assert sum(r.access_bytes for r in prof.layers) == prof.mac_cost_bytes
    text = prof.table()
    assert "| unused" in text and "Linear" in text and "MACs" in text


def test_mac_cost_of_a_linear_is_weights_plus_activations() -> None:
    lin = nn.Linear(32, 16)
    x = torch.randn(5, 32)
    prof = profile(lin, x)
    weights = (32 * 16 + 16) * 4
    assert prof.weight_read_bytes == weights
    assert prof.activation_read_bytes == x.numel() * 4
    assert prof.activation_write_bytes == 5 * 16 * 4
    assert prof.mac_cost_bytes == weights + x.numel() * 4 + 5 * 16 * 4


def test_views_are_free_and_peak_follows_lifetimes() -> None:
    # x [1, 1024] floats = 4 KiB each stage; Sequential keeps input, a, b alive at most
    model = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.ReLU(), nn.Sigmoid(), nn.Tanh())
    x = torch.randn(1, 1024)
    prof = profile(model, x)
    size = 1024 * 4
    # relu -> flatten (a view, free) -> relu -> sigmoid -> tanh: each op writes 4 KiB,
    # and at any op boundary the caller's input, the previous output and the new one are live
    assert prof.activation_write_bytes == 4 * size
    assert prof.peak_activation_bytes == 3 * size
    rows = {r.name: r for r in prof.layers}
    assert rows["1"].access_bytes == 0  # Flatten of a contiguous tensor is a view


def test_peak_counts_a_wide_intermediate() -> None:
    class Wide(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            big = x.repeat(1, 8)  # [1, 8192] = 32 KiB, freed before the next stage
            s = big.sum(dim=1, keepdim=True)
            del big
            return x * s

    x = torch.randn(1, 1024)
    prof = profile(Wide(), x)
    assert prof.peak_activation_bytes >= 1024 * 4 + 8192 * 4
    assert prof.peak_activation_bytes < 1024 * 4 * 3 + 8192 * 4


def test_to_dict_is_json_and_flops_are_twice_macs() -> None:
    prof = profile(_mlp(), torch.randn(2, 64))
    assert isinstance(prof, Profile)
    doc = json.loads(json.dumps(prof.to_dict()))
    assert doc["flops"] == 2 * doc["macs"] > 0
    assert doc["macs"] == 2 * (64 * 128 + 128 * 32 + 32 * 10)
    assert {"name", "type", "params", "macs", "output_shape"} <= set(doc["layers"][0])


def test_a_failing_forward_leaves_no_hooks_and_restores_flags() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        profile(model, torch.randn(2, 4))
    assert model.training
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert not model.lin._forward_pre_hooks and not model.lin._forward_hooks
    assert profile(nn.Linear(4, 4), torch.randn(2, 4)).macs == 2 * 16  # the dispatch mode was popped
