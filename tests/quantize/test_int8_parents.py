"""Int8 swaps keep parents that read the swapped module's ``.weight`` working, and static
calibration names the layer that saw no data."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context, MethodError, Targets
from slimkit.quantize.int8_modules import Int8Conv2d, Int8Linear
from slimkit.quantize.observers import MinMaxObserver
from slimkit.quantize.ptq import DynamicQuant, StaticQuant


class AttnNet(nn.Module):
    """nn.MultiheadAttention (reads ``out_proj.weight`` / ``.bias`` itself) and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mha(x, x, x, need_weights=False)[0])  # [B, T, 8]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("grad", [False, True])  # no_grad takes MHA's fused fast path
def test_multihead_attention_after_dynamic_int8_matches_float(grad: bool) -> None:
    torch.manual_seed(0)
    model = AttnNet().eval()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    q = slimkit.apply(model, DynamicQuant(), Targets(), Context())
    assert isinstance(q.mha.out_proj, Int8Linear) and isinstance(q.head, Int8Linear)
    assert isinstance(q.mha.in_proj_weight, nn.Parameter)  # a raw parameter, not a layer: stays float
    with torch.set_grad_enabled(grad):
        out = q(x)
    err = float((out - ref).abs().max())
    assert 0 < err < 0.02 * float(ref.abs().max()) and _cos(out, ref) > 0.999  # int8 rounding, nothing more
    w = q.mha.out_proj.weight  # the dequantized int8 weight the parent computes with
    assert w.dtype == torch.float32 and torch.allclose(w, model_weight_grid(q.mha.out_proj))
    with pytest.raises(AttributeError):
        q.mha.out_proj.weight = torch.zeros(32, 32)  # read-only


def model_weight_grid(m: Int8Linear) -> torch.Tensor:
    return m.weight_int8.float() * m.weight_scale[:, None]  # [O, I]


def test_hf_vit_after_static_int8_still_runs() -> None:
    """ViTModel reads ``patch_embeddings.projection.weight.dtype`` before calling the conv."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                 image_size=16, patch_size=4)
    model = transformers.ViTModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]
    with torch.no_grad():
        ref = model(calib[0]).last_hidden_state
    q = slimkit.apply(model, StaticQuant(), Targets(types=("Conv2d", "Linear"), exclude=("pooler.*",)),
                      Context(calib_data=calib))
    assert isinstance(q.embeddings.patch_embeddings.projection, Int8Conv2d)
    with torch.no_grad():
        out = q(calib[0]).last_hidden_state
    assert _cos(out, ref) > 0.99


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.aux = nn.Linear(8, 8)  # a head only used in training, say

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_static_int8_names_the_layer_that_saw_no_calibration_data() -> None:
    torch.manual_seed(0)
    ctx = Context(calib_data=[torch.randn(4, 8)])
    with pytest.raises(MethodError, match=r"layer\(s\) aux saw no calibration data.*exclude them"):
        slimkit.apply(WithUnused().eval(), StaticQuant(), Targets(), ctx)
    q = slimkit.apply(WithUnused().eval(), StaticQuant(), Targets(exclude=("aux",)), ctx)
    assert isinstance(q.fc, Int8Linear) and type(q.aux) is nn.Linear


def test_observer_error_names_what_it_observes() -> None:
    with pytest.raises(MethodError, match="MinMaxObserver of fc input has observed no data"):
        MinMaxObserver(name="fc input").range()


def test_multihead_attention_int8_model_exports_to_onnx(tmp_path) -> None:
    """The export traces MHA off its fused fast path, with the int8 layers as their float twins."""
    from slimkit.export.onnx import write_onnx

    torch.manual_seed(0)
    q = slimkit.apply(AttnNet().eval(), DynamicQuant(), Targets(), Context())
    info = write_onnx(q, torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1)), tmp_path / "m.onnx")
    assert info["int8"] == "dynamic" and info["int8_layers_in_model"] == 2
    assert info["int8_nodes"] == 1  # the head; MHA reads out_proj.weight itself (its values are int8-grid already)
    assert info["max_abs_diff_float"] < 1e-5 and info["mean_cosine"] > 0.999
    assert isinstance(q.mha.out_proj, Int8Linear)  # put back after the export
