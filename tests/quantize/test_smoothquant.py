"""SmoothQuant: the scale formula, float equivalence on a tiny BERT, and the W8A8 error it buys."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

import slimkit
from slimkit.core import Context, Targets
from slimkit.core.errors import ConfigError, MethodError
from slimkit.quantize import SmoothedLinear, SmoothQuant, WeightOnlyLinear, WeightOnlyQuant, smooth_scales
from slimkit.quantize.affine import fake_quant, qparams
from slimkit.quantize.smoothquant import smooth_linear


def test_smooth_scales_formula() -> None:
    xa = torch.tensor([100.0, 1.0, 4.0, 0.0])
    wa = torch.tensor([1.0, 4.0, 1.0, 2.0])
    s = smooth_scales(xa, wa, alpha=0.5)
    assert torch.allclose(s[:3], torch.tensor([10.0, 0.5, 2.0]))
    assert float(s[3]) == 1.0  # a dead channel is left alone
    assert torch.allclose(smooth_scales(xa[:3], wa[:3], alpha=1.0), xa[:3])
    assert torch.allclose(smooth_scales(xa[:3], wa[:3], alpha=0.0), 1.0 / wa[:3])
    with pytest.raises(ConfigError, match="alpha"):
        smooth_scales(xa, wa, alpha=1.5)


def _w8a8(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-tensor int8 activations x per-channel int8 weights, simulated in float."""
    sx, zx = qparams(x.min(), x.max(), 8, True)
    sw, zw = qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), 8, True)
    return fake_quant(x, sx, zx, -127, 127) @ fake_quant(w, sw, zw, -127, 127).T


def test_smoothing_reduces_w8a8_error_with_outlier_channels() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)
    x[:, [3, 17]] *= 60.0  # activation outlier channels
    w = torch.randn(32, 64, generator=g) * 0.1
    y = x @ w.T
    s = smooth_scales(x.abs().amax(0), w.abs().amax(0), 0.5)
    plain = float(((_w8a8(x, w) - y) ** 2).mean())
    smoothed = float(((_w8a8(x / s, w * s) - y) ** 2).mean())
    assert smoothed < 0.5 * plain


def _tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # give LayerNorm outputs a few outlier channels, as trained transformers have
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p[[1, 7]] = 25.0
    return model


class _Wrap(nn.Module):
    """Tensor output (``last_hidden_state``) so outputs compare directly."""

    def __init__(self) -> None:
        super().__init__()
        self.bert = _tiny_bert()
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 50, (4, 12), generator=g), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
            for _ in range(n)]


def test_smoothquant_is_float_equivalent_on_tiny_bert(tmp_path) -> None:
    model = _Wrap()
    batches = _batches()
    q = slimkit.apply(model, SmoothQuant(alpha=0.5), Targets(types=("Linear",)), Context(calib_data=batches))
    smoothed = [n for n, m in q.named_modules() if isinstance(m, SmoothedLinear)]
    assert len(smoothed) == 2 * 6  # q, k, v, attention out, FFN in, FFN out per layer
    rec = slimkit.records(q)[-1]
    assert rec.summary["mean_outlier_ratio_after"] < rec.summary["mean_outlier_ratio_before"]
    changed = q.bert.encoder.layer[0].attention.self.query
    assert not torch.allclose(changed.linear.weight, model.bert.encoder.layer[0].attention.self.query.weight)
    with torch.no_grad():
        for b in batches:
            assert torch.allclose(q(**b), model(**b), atol=1e-4, rtol=1e-4)
    slimkit.save(q, tmp_path)
    r = slimkit.restore(tmp_path, model=_Wrap)
    with torch.no_grad():
        assert torch.allclose(r(**batches[0]), q(**batches[0]), atol=1e-6)


def test_smoothquant_then_weight_only_restores(tmp_path) -> None:
    model = _Wrap()
    ctx = Context(calib_data=_batches(2))
    q = slimkit.apply(model, SmoothQuant(alpha=0.5), Targets(types=("Linear",)), ctx)
    q = slimkit.apply(q, WeightOnlyQuant(bits=8), Targets(types=("Linear",)), ctx)
    inner = q.bert.encoder.layer[1].intermediate.dense
    assert isinstance(inner, SmoothedLinear) and isinstance(inner.linear, WeightOnlyLinear)
    slimkit.save(q, tmp_path)
    r = slimkit.restore(tmp_path, model=_Wrap)
    b = _batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(r(**b), q(**b), atol=1e-6)
        assert float((q(**b) - model(**b)).norm() / model(**b).norm()) < 0.05


def test_smooth_linear_and_errors() -> None:
    lin = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    y = lin(x)
    s = torch.rand(8) + 0.5
    wrapped = smooth_linear(lin, s)
    assert torch.allclose(wrapped(x), y, atol=1e-6)
    with pytest.raises(MethodError, match="calib_data"):
        slimkit.apply(nn.Sequential(nn.Linear(4, 4)), SmoothQuant())
    with pytest.raises(ConfigError, match="alpha"):
        SmoothQuant(alpha=-0.1)
