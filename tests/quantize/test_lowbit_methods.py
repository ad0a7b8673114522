"""quantize.binary / quantize.ternary: STE training, conversion to packed 1- and 2-bit codes, digits claim."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, Recipe
from slimkit.quantize.lowbit_methods import BinaryLayer, BinaryQuant, TernaryLayer, TernaryQuant
from slimkit.quantize.packed import PackedLayer

from .lowbit_helpers import check_round_trip, inputs, tiny_ctx, tiny_model


@pytest.mark.parametrize("mode", ["binaryconnect", "bwn", "xnor"])
def test_binary_layer_converts_to_one_bit_codes_with_the_same_output(mode: str) -> None:
    conv = nn.Conv2d(2, 4, 3, padding=1)
    layer = BinaryLayer(conv, mode, per_channel=False)  # type: ignore[arg-type]
    x = inputs()
    packed = layer.convert()
    assert torch.allclose(packed(x), layer(x), atol=1e-5)
    assert packed.payload.numel() == math.ceil(conv.weight.numel() / 8)
    w = packed.weight_float()
    rows = w.reshape(4, -1).abs()
    if mode == "binaryconnect":
        assert torch.equal(rows, torch.ones_like(rows))
    elif mode == "xnor":  # one scale per filter: the mean |w| of that filter
        assert torch.allclose(rows[:, 0], conv.weight.detach().abs().reshape(4, -1).mean(1))
    else:
        assert torch.allclose(rows, torch.full_like(rows, float(conv.weight.detach().abs().mean())))
    assert torch.equal(torch.sign(w), torch.where(conv.weight < 0, -1.0, 1.0))


def test_binary_ste_passes_gradient_to_the_latent_weight() -> None:
    layer = BinaryLayer(nn.Linear(6, 2), "bwn", per_channel=True)
    layer(torch.randn(4, 6)).sum().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("mode", ["twn", "ttq"])
def test_ternary_layer_converts_to_two_bit_codes_with_the_same_output(mode: str) -> None:
    lin = nn.Linear(32, 5)
    layer = TernaryLayer(lin, mode, per_channel=False, delta_factor=0.7, threshold=0.05)  # type: ignore[arg-type]
    x = torch.randn(3, 32)
    packed = layer.convert()
    assert torch.allclose(packed(x), layer(x), atol=1e-5)
    assert packed.payload.numel() == math.ceil(lin.weight.numel() * 2 / 8)
    levels = packed.weight_float().unique()
    assert levels.numel() == 3 and 0.0 in levels.tolist()
    if mode == "twn":  # threshold 0.7 mean|w| decides which weights become zero
        delta = 0.7 * lin.weight.detach().abs().mean()
        assert torch.equal(packed.weight_float() == 0, lin.weight.detach().abs() <= delta)


def test_ttq_learns_its_two_scales(tmp_path: Path) -> None:
    model = tiny_model()
    start = TernaryLayer(model[4], "ttq", per_channel=False, delta_factor=0.7, threshold=0.05).ttq.requires_grad_(False)
    assert start is not None
    out = slimkit.apply(model, TernaryQuant(mode="ttq", steps=40, lr=1e-2), None, tiny_ctx())
    fc = out[4]
    assert isinstance(fc, PackedLayer)
    cb = fc.codebook[0]
    assert cb[1] == 0 and cb[0] < 0 < cb[2]
    moved = abs(float(cb[2]) - start.wp.item()) + abs(float(-cb[0]) - start.wn.item())
    assert moved > 0.05 * start.wp.item()  # the scales were trained, not left at their mean-|w| init
    check_round_trip(out, tmp_path / "ttq", inputs())


def test_binary_and_ternary_run_from_yaml_and_round_trip(tmp_path: Path) -> None:
    recipe = Recipe.from_yaml("""
steps:
  - kind: quantize.ternary
    targets: {include: ["0"]}
    with: {mode: twn, per_channel: true, steps: 5}
  - kind: quantize.binary
    targets: {include: ["4"]}
    with: {mode: xnor, steps: 5}
""")
    out = recipe.run(tiny_model(), tiny_ctx())
    assert out[0].meta["bits"] == 2 and out[0].meta["groups"] == 8
    assert out[4].meta["bits"] == 1 and out[4].meta["act"] == {"kind": "xnor"}
    assert [r.kind for r in slimkit.records(out)] == ["quantize.ternary", "quantize.binary"]
    check_round_trip(out, tmp_path / "yaml", inputs())


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="mode"):
        BinaryQuant.from_dict({"mode": "sign"})
    with pytest.raises(ConfigError, match="per_channel"):
        TernaryQuant(mode="ttq", per_channel=True)
    with pytest.raises(ConfigError, match="steps"):
        TernaryQuant(steps=-1)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", ["twn", "ttq"])
def test_digits_ternary_within_two_points_of_fp32(
        mode: str, tmp_path: Path, digits_finetune_ctx: slimkit.core.Context) -> None:
    from slimkit.zoo.digits import DigitsCNN, digits_split, pretrained_digits_cnn

    _, _, x_te, y_te = digits_split()
    dense = pretrained_digits_cnn()
    ctx = digits_finetune_ctx
    out = slimkit.apply(dense, TernaryQuant(mode=mode, steps=200), None, ctx)
    slimkit.save(out, tmp_path / "t")
    restored = slimkit.restore(tmp_path / "t", model=DigitsCNN)

    def correct(m: nn.Module) -> int:
        with torch.no_grad():
            return int((m.eval()(x_te).argmax(1) == y_te).sum())

    # Relative to this machine's fp32 model, in whole test images (of 450): 2 points = 9 images.
    # Measured over reference models trained with seeds 0-5: fp32 446-449 correct, drops of
    # 0-2 (twn) and -1-4 (ttq) images.
    dense_ok, ternary_ok = correct(dense), correct(restored)
    assert dense_ok >= 430  # the baseline is a real model (fp32 measured 443-449 on several CPUs)
    assert dense_ok - ternary_ok <= 9, (dense_ok, ternary_ok)
    codes = sum(m.payload.numel() for m in restored.modules() if isinstance(m, PackedLayer))
    weights = sum(math.prod(m.meta["shape"]) for m in restored.modules() if isinstance(m, PackedLayer))
    assert codes == sum(math.ceil(math.prod(m.meta["shape"]) * 2 / 8)
                        for m in restored.modules() if isinstance(m, PackedLayer))
    assert weights == 40208  # every conv / linear weight of the digits CNN is ternary


def test_xnor_input_keeps_signal_after_relu() -> None:
    from slimkit.quantize.packed import xnor_input

    x = torch.relu(torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0)))  # all >= 0
    y = xnor_input(x)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(y > m, x > m)  # the bit is "above the sample mean", not a constant
    assert all(len(torch.unique(y[i] > m[i])) == 2 for i in range(4))
    z = torch.tensor([[-2.0, -1.0, 1.0, 2.0]])  # zero-mean: plain XNOR-Net sign(x) * mean|x|
    assert torch.allclose(xnor_input(z), torch.sign(z) * 1.5)
