"""lowrank.block_diagonal: forward, projection, MACs, record + replay, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, MethodError, Targets
from slimkit.lowrank.block_diagonal import BlockDiagonalLinear, BlockDiagonalLowrank, diagonal_blocks
from slimkit.measure import profile

pytestmark = pytest.mark.usefixtures("one_thread_module")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 12)).eval()


def test_forward_equals_the_block_diagonal_dense_product() -> None:
    layer = BlockDiagonalLinear(12, 8, 4)
    with torch.no_grad():
        layer.weight.normal_(generator=torch.Generator().manual_seed(0))
        layer.bias.normal_(generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))
    w = layer.materialize()
    assert w.shape == (8, 12) and torch.count_nonzero(w[:2, 3:]) == 0  # nothing off the diagonal
    with torch.no_grad():
        torch.testing.assert_close(layer(x), nn.functional.linear(x, w, layer.bias))


def test_projection_keeps_the_diagonal_blocks_exactly() -> None:
    layer = BlockDiagonalLinear(12, 8, 4)
    with torch.no_grad():
        layer.weight.normal_(generator=torch.Generator().manual_seed(3))
    assert torch.equal(diagonal_blocks(layer.materialize(), 4), layer.weight.detach())


def test_macs_are_dense_over_blocks() -> None:
    layer = BlockDiagonalLinear(384, 1536, 4).eval()
    assert profile(layer, torch.randn(3, 384)).macs == 3 * 384 * 1536 // 4


def test_apply_save_restore(tmp_path: Path) -> None:
    out = slimkit.apply(mlp(), BlockDiagonalLowrank(blocks=4))
    (rec,) = slimkit.records(out)
    assert rec.data["layers"]["2"] == {"in": 40, "out": 12, "bias": True, "blocks": 4}
    assert rec.summary["params_after"] == (24 * 40 + 40 * 12) // 4 + 40 + 12
    slimkit.save(out, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: mlp(1))
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(restored(x), out(x))


def test_errors() -> None:
    with pytest.raises(ConfigError, match="blocks"):
        BlockDiagonalLowrank(blocks=1)
    with pytest.raises(MethodError, match="do not divide layer '2'"):
        slimkit.apply(mlp(), BlockDiagonalLowrank(blocks=8))
    with pytest.raises(MethodError, match="no nn.Linear"):
        slimkit.apply(mlp(), BlockDiagonalLowrank(), Targets(include=("1",)))
