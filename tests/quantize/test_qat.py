"""quantize.qat: LSQ / PACT math, fake-quant layers, conversion to packed codes, save/restore."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, Recipe, Targets
from slimkit.core.context import Context
from slimkit.quantize.packed import PackedLayer
from slimkit.quantize.qat import QatQuant, calibrate, lsq_quant, pact_quant, qat_layer

from .lowbit_helpers import check_round_trip, inputs, tiny_ctx, tiny_model


def test_lsq_values_and_step_gradient_follow_esser_et_al() -> None:
    x = torch.tensor([-3.0, -0.74, 0.2, 0.61, 5.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    qn, qp, g = 3, 3, 0.25
    y = lsq_quant(x, s, qn, qp, g)
    assert torch.allclose(y, torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5]))
    y.sum().backward()
    v = x.detach() / 0.5
    # dy/ds: -Qn below, Qp above, round(v) - v inside; times the gradient scale g
    expected = torch.where(v <= -qn, -qn, torch.where(v >= qp, qp, v.round() - v)).sum() * g
    assert math.isclose(float(s.grad), float(expected), rel_tol=1e-6)
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_pact_clips_at_alpha_and_alpha_gets_the_clipped_count() -> None:
    alpha = torch.tensor(1.0, requires_grad=True)
    x = torch.tensor([-1.0, 0.3, 2.0, 3.0])
    y = pact_quant(x, alpha, bits=2)  # grid 0, 1/3, 2/3, 1
    assert torch.allclose(y, torch.tensor([0.0, 1 / 3, 1.0, 1.0]))
    y.sum().backward()
    # two elements above alpha contribute 1 each; 0.3 contributes its rounding residual (round(0.9) - 0.9) / 3
    assert math.isclose(float(alpha.grad), 2.0 + (1.0 - 0.9) / 3, rel_tol=1e-5)
    signed = pact_quant(torch.tensor([-5.0, 5.0]), torch.tensor(2.0), bits=3, signed=True)
    assert torch.equal(signed, torch.tensor([-2.0, 2.0]))


@pytest.mark.parametrize("weight_quant", ["lsq", "minmax"])
@pytest.mark.parametrize("act_quant", ["pact", "lsq", "none"])
def test_converted_layer_computes_what_the_trained_fake_quant_layer_computes(weight_quant: str, act_quant: str) -> None:
    conv = nn.Conv2d(2, 4, 3, padding=1)
    layer = qat_layer(conv, 3, 4, weight_quant, act_quant)  # type: ignore[arg-type]
    model = nn.Sequential(layer)
    x = inputs()  # signed inputs: the calibration must pick a symmetric grid
    calibrate(model, [layer], Context(calib_data=[x]), 1, "test")
    assert layer.act_signed is (act_quant != "none")
    with torch.no_grad():  # move the learned parameters off their initial values
        layer.step.mul_(1.1)
        layer.alpha.mul_(0.8)
    packed = layer.convert()
    assert isinstance(packed, PackedLayer)
    assert torch.allclose(packed(x), layer.eval()(x), atol=1e-5)
    codes = packed.codes()
    assert int(codes.min()) >= 0 and int(codes.max()) <= 6  # 3 bits, narrow: 7 levels
    assert packed.payload.numel() == math.ceil(conv.weight.numel() * 3 / 8)


def test_qat_trains_steps_and_the_loss_drops(tmp_path: Path) -> None:
    ctx = tiny_ctx()
    model = tiny_model()
    out = slimkit.apply(model, QatQuant(bits=2, act_bits=4, steps=60, lr=1e-2), None, ctx)
    rec = slimkit.records(out)[-1]
    assert rec.kind == "quantize.qat" and rec.summary["bits_per_weight"] == 2.0
    layers = [m for m in out.modules() if isinstance(m, PackedLayer)]
    assert len(layers) == 2 and all(set(m.codes().unique().tolist()) <= {0, 1, 2} for m in layers)
    x, y = ctx.train_data[0]  # type: ignore[index]
    before = nn.functional.cross_entropy(slimkit.apply(model, QatQuant(bits=2, act_bits=4, steps=0), None, ctx)(x), y)
    after = nn.functional.cross_entropy(out(x), y)
    assert after < before
    check_round_trip(out, tmp_path / "qat", inputs())


def test_qat_runs_from_yaml_and_respects_targets(tmp_path: Path) -> None:
    recipe = Recipe.from_yaml("""
steps:
  - kind: quantize.qat
    targets: {include: ["4"]}
    with: {bits: 4, act_quant: none, steps: 5, storage: huffman}
""")
    out = recipe.run(tiny_model(), tiny_ctx())
    assert isinstance(out[4], PackedLayer) and isinstance(out[0], nn.Conv2d)
    assert out[4].meta["storage"] == "huffman"
    check_round_trip(out, tmp_path / "yaml", inputs())


def test_qat_config_and_target_errors() -> None:
    with pytest.raises(ConfigError, match="bits"):
        QatQuant(bits=1)
    with pytest.raises(ConfigError, match="act_quant"):
        QatQuant.from_dict({"act_quant": "relu6"})
    with pytest.raises(slimkit.core.MethodError, match="no Linear or Conv2d"):
        slimkit.apply(tiny_model(), QatQuant(steps=0, act_quant="none"), Targets(include=("nothing",)), tiny_ctx())


def test_qat_trains_through_the_distillation_engine(tmp_path: Path) -> None:
    # the fake-quant student learns from a float teacher with Hinton KD (pure KD: alpha=1), 200 steps.
    # Agreement is measured on 4,096 inputs: on 64 (one input = 0.016) float-rounding differences
    # between CPUs moved it across the bar. Measured on 4,096: +0.37 (teachers seeded 4 / 5: +0.49 /
    # +0.29; 80 steps instead of 200: +0.30 to +0.47), so +0.2 has headroom and still needs learning.
    ctx = tiny_ctx()
    teacher = tiny_model(seed=3)
    ctx.teacher = teacher
    out = slimkit.apply(tiny_model(), QatQuant(bits=3, act_bits=8, steps=200, lr=1e-2, kd_alpha=1.0, kd_temperature=2.0),
                        None, ctx)
    x = inputs(4096)
    untrained = slimkit.apply(tiny_model(), QatQuant(bits=3, act_bits=8, steps=0), None, ctx)

    def agree(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x).argmax(1) == teacher(x).argmax(1)).float().mean())

    assert agree(out) > agree(untrained) + 0.2  # it learned the teacher, not the labels
    assert all(isinstance(m, PackedLayer) for m in (out[0], out[4]))
    check_round_trip(out, tmp_path / "kd", inputs())
    with pytest.raises(slimkit.core.MethodError, match="teacher"):
        slimkit.apply(tiny_model(), QatQuant(steps=2, kd_alpha=0.5), None, tiny_ctx())
    with pytest.raises(ConfigError, match="kd_alpha"):
        QatQuant(kd_alpha=1.5)
