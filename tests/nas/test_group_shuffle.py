"""block.group_shuffle: the restricted init, the shuffle order, the handler, replay and errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Targets
from slimkit.measure import profile
from slimkit.nas.group_shuffle import ChannelShuffle, GroupShuffleBlock, group_weights, grouped_block, shuffled_position

pytestmark = pytest.mark.usefixtures("one_thread_module")


def small_cnn(seed: int = 0) -> nn.Module:
    """Stem 3->16, 3x3 16->32 stride 2, a 1x1 32->32, a depthwise 3x3, head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


X = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))


def dense_equivalent(block: nn.Sequential, c_in: int, groups: int, shuffle: bool) -> torch.Tensor:
    """The dense [C_out, C_in, kh, kw] kernel ``block`` computes (zeros outside the groups)."""
    w = block[0].weight
    c_out, n = w.shape[0], w.shape[1]
    k = c_out // groups
    dense = torch.zeros(c_out, c_in, *w.shape[2:])
    rows = shuffled_position(c_out, groups) if shuffle else torch.arange(c_out)
    for c in range(c_out):
        dense[rows[c], (c // k) * n:(c // k + 1) * n] = w[c]
    return dense


@pytest.mark.parametrize("shuffle", [True, False])
def test_block_computes_the_restricted_kernel(shuffle: bool) -> None:
    """A kernel that already has the block's pattern is reproduced exactly; any kernel's restriction is
    what the block computes (the least-squares fit for that pattern)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, stride=2)
    block = grouped_block(conv, 4, shuffle)
    dense = dense_equivalent(block, 8, 4, shuffle)
    mask = dense != 0
    assert int(mask.sum()) == conv.weight.numel() // 4
    assert torch.equal(dense[mask], conv.weight.detach()[mask])
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        ref = nn.functional.conv2d(x, dense, conv.bias, stride=2, padding=1)
        assert torch.allclose(block(x), ref, atol=1e-5)
        conv.weight.mul_(mask)  # now the conv has exactly the block's pattern
        assert torch.allclose(grouped_block(conv, 4, shuffle)(x), conv(x), atol=1e-5)


def test_shuffle_positions_match_channel_shuffle() -> None:
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    out = nn.ChannelShuffle(3)(x).flatten()
    p = shuffled_position(12, 3)
    assert torch.equal(out[p], torch.arange(12.0))
    y = torch.randn(2, 12, 3, 5)
    assert torch.equal(ChannelShuffle(3)(y), nn.ChannelShuffle(3)(y))  # ours exports to ONNX, same order
    assert group_weights(torch.randn(12, 6, 1, 1), 3, True).shape == (12, 2, 1, 1)


def test_handler_record_skips_and_macs() -> None:
    model = small_cnn()
    out = slimkit.apply(model, GroupShuffleBlock(groups=4), Targets(), Context())
    (rec,) = slimkit.records(out)
    assert set(rec.data["layers"]) == {"2", "4"}
    assert "divide" in rec.data["skipped"]["0"] and "grouped" in rec.data["skipped"]["6"]
    assert all(0 < v["error"] < 1 for v in rec.data["layers"].values())
    assert isinstance(out[2][1], ChannelShuffle) and out[2][0].groups == 4 and out[2][0].stride == (2, 2)
    before, after = profile(model, X).macs, profile(out, X).macs
    saved = 3 * (4 * 36 * (32 * 16 * 9) + 4 * 36 * 32 * 32) // 4  # 3/4 of both converted convs' MACs
    assert before - after == saved
    plain = slimkit.apply(model, GroupShuffleBlock(groups=2, shuffle=False), Targets(include=("4",)), Context())
    assert len(plain[4]) == 1 and plain[4][0].groups == 2


def test_save_restore_bit_exact_and_tampering(tmp_path: Path) -> None:
    out = slimkit.apply(small_cnn(), GroupShuffleBlock(groups=2), Targets(types=("Conv2d",)), Context())
    slimkit.save(out, tmp_path / "m")
    back = slimkit.restore(tmp_path / "m", model=lambda: small_cnn(seed=5))
    with torch.no_grad():
        assert torch.equal(back(X), out(X))
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    man["records"][0]["data"]["groups"] = 5  # 16 / 32 channels do not divide by 5
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="divide"):
        slimkit.restore(tmp_path / "m", model=small_cnn)


def test_errors_name_the_layer() -> None:
    with pytest.raises(ConfigError, match="groups"):
        GroupShuffleBlock(groups=1)
    with pytest.raises(MethodError, match="'0'.*divide"):
        slimkit.apply(small_cnn(), GroupShuffleBlock(groups=2), Targets(include=("0",)), Context())
    with pytest.raises(MethodError, match="'6'.*grouped"):
        slimkit.apply(small_cnn(), GroupShuffleBlock(), Targets(include=("6",)), Context())
    with pytest.raises(MethodError, match="select no Conv2d"):
        slimkit.apply(small_cnn(), GroupShuffleBlock(), Targets(types=("Linear",)), Context())


@pytest.mark.slow  # the ONNX exporter's first call takes seconds
@pytest.mark.parametrize("kind", ["block.group_shuffle", "block.depthwise_separable"])
def test_converted_models_export_to_onnx(kind: str, tmp_path: Path) -> None:
    """Both blocks are plain convs (plus a reshape / transpose shuffle), so ONNX Runtime runs them."""
    from slimkit.core import config_class
    from slimkit.export.onnx import OrtModel, export_onnx

    out = slimkit.apply(small_cnn(), config_class(kind)(), Targets(types=("Conv2d",)), Context())
    path = export_onnx(out, (X,), tmp_path / "m.onnx")
    got = OrtModel(path)(X)
    got = got[0] if isinstance(got, (list, tuple)) else got
    with torch.no_grad():
        assert torch.allclose(torch.as_tensor(got), out(X), atol=1e-5)
