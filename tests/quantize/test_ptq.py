"""Int8 PTQ on torch's int8 kernels (dynamic/static) and fp16/bf16 casting: accuracy, save/restore, MACs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit import measure
from slimkit.core import Context, MethodError, Targets
from slimkit.core.errors import ConfigError
from slimkit.quantize.int8_modules import Int8Conv2d, Int8Linear, quantize_weight
from slimkit.quantize.ptq import CastQuant, DynamicQuant, StaticQuant

pytestmark = pytest.mark.int8  # the int8 results here assume kernels that do not saturate (rerun forced to AVX2)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),  # depthwise
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    ).eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_quantize_weight_is_symmetric_int8_with_per_row_scales() -> None:
    w = torch.randn(6, 10) * torch.arange(1, 7).float()[:, None]  # rows of very different scale
    codes, scale = quantize_weight(w, per_channel=True)
    assert codes.dtype == torch.int8 and scale.shape == (6,)
    assert int(codes.abs().max()) == 127
    assert torch.allclose(codes.float() * scale[:, None], w, atol=float(scale.max()) / 2 + 1e-6)
    _, scale_t = quantize_weight(w, per_channel=False)
    assert torch.all(scale_t == scale_t[0]) and scale_t[0] == pytest.approx(float(w.abs().max()) / 127)


@pytest.mark.parametrize("per_channel", [True, False])
def test_dynamic_int8_linear_close_to_float(per_channel: bool) -> None:
    m = _mlp()
    x = torch.randn(16, 32)
    q = slimkit.apply(m, DynamicQuant(per_channel=per_channel), Targets())
    assert all(isinstance(q[i], Int8Linear) for i in (0, 2))
    assert q[0].weight_int8.dtype == torch.int8
    err = _rel_err(q(x), m(x))
    assert 0.0 < err < 0.02  # int8 changes the result, but only slightly
    assert isinstance(m[0], nn.Linear)  # the caller's model is untouched


def test_dynamic_int8_runs_the_int8_kernel_not_dequantized_float() -> None:
    # The dynamic kernel quantizes activations too, so it differs from float math on the
    # dequantized weights; an implementation that silently dequantized would match it exactly.
    m = _mlp()
    x = torch.randn(16, 32)
    q = slimkit.apply(m, DynamicQuant(), Targets())
    y_deq = nn.functional.linear(x, q[0].dequantized_weight(), q[0].bias)
    assert not torch.equal(q[0](x), y_deq)
    assert _rel_err(q[0](x), y_deq) < 0.02


def test_static_int8_cnn_close_to_float_and_calibrated() -> None:
    m = _cnn()
    calib = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    q = slimkit.apply(m, StaticQuant(), Targets(types=("Linear", "Conv2d")), Context(calib_data=calib))
    assert isinstance(q[0], Int8Conv2d) and isinstance(q[2], Int8Conv2d) and isinstance(q[5], Int8Linear)
    x = torch.randn(16, 3, 8, 8)
    assert _rel_err(q(x), m(x)) < 0.08
    # ranges come from the calibration data: the first conv's input range spans the data's
    in_scale, in_zp = float(q[0].act_qparams[0]), int(q[0].act_qparams[1])
    lo, hi = min(float(c.min()) for c in calib), max(float(c.max()) for c in calib)
    assert in_scale == pytest.approx((hi - lo) / 255, rel=1e-3)
    assert 0 < in_zp < 255
    rec = slimkit.records(q)[-1]
    assert rec.summary["layers"] == 3 and rec.summary["calib_batches"] == 4


def test_static_int8_needs_calibration_data() -> None:
    with pytest.raises(MethodError, match="calib_data"):
        slimkit.apply(_mlp(), StaticQuant(), Targets(), Context())
    with pytest.raises(ConfigError):
        StaticQuant(calib_batches=0)


def test_targets_selecting_nothing_is_an_error() -> None:
    with pytest.raises(MethodError, match="no Linear"):
        slimkit.apply(_mlp(), DynamicQuant(), Targets(include=("nothing*",)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast_keeps_float32_boundary(dtype: str) -> None:
    m = _cnn()
    x = torch.randn(4, 3, 8, 8)
    c = slimkit.apply(m, CastQuant(dtype=dtype), Targets(types=("Conv2d",)))
    assert c[0].weight.dtype == getattr(torch, dtype) and c[5].weight.dtype == torch.float32
    y = c(x)
    assert y.dtype == torch.float32
    tol = 0.01 if dtype == "float16" else 0.05
    assert 0.0 < _rel_err(y, m(x)) < tol


@pytest.mark.parametrize("make", [
    lambda m: slimkit.apply(m, DynamicQuant(), Targets(types=("Linear",))),
    lambda m: slimkit.apply(m, StaticQuant(), Targets(types=("Linear", "Conv2d")),
                            Context(calib_data=[torch.randn(8, 3, 8, 8)])),
    lambda m: slimkit.apply(m, CastQuant(dtype="float16"), Targets(types=("Conv2d",))),
], ids=["dynamic", "static", "cast"])
def test_save_restore_is_exact(make, tmp_path) -> None:
    m = _cnn()
    q = make(m)
    x = torch.randn(4, 3, 8, 8)
    slimkit.save(q, tmp_path)
    r = slimkit.restore(tmp_path, model=_cnn)
    assert [type(a) for a in r.modules()] == [type(a) for a in q.modules()]
    assert torch.equal(r(x), q(x))
    for (k, a), (_, b) in zip(q.state_dict().items(), r.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), k


def test_int8_model_deepcopies_after_running() -> None:
    import copy

    q = slimkit.apply(_mlp(), DynamicQuant(), Targets())
    x = torch.randn(2, 32)
    y = q(x)  # packs the weights
    assert torch.equal(copy.deepcopy(q)(x), y)


def test_profile_counts_int8_macs_like_float() -> None:
    m = _cnn()
    x = torch.randn(2, 3, 8, 8)
    q = slimkit.apply(m, StaticQuant(), Targets(types=("Linear", "Conv2d")), Context(calib_data=[x]))
    d = slimkit.apply(m, DynamicQuant(), Targets())
    dense = measure.count_macs(m, x)
    assert dense > 0
    assert measure.count_macs(q, x) == dense
    assert measure.count_macs(d, x) == dense


class _SamePadConv(nn.Conv2d):
    """The TF-"same" port pattern (EfficientNet-Lite): explicit ZeroPad2d child, then the conv."""

    def __init__(self) -> None:
        super().__init__(3, 4, 3, stride=2)
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


class _OddConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_static_int8_keeps_static_same_padding_and_restores(tmp_path) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(_SamePadConv(), nn.ReLU()).eval()
    x = torch.randn(4, 3, 9, 9)
    q = slimkit.apply(m, StaticQuant(), Targets(types=("Conv2d",)), Context(calib_data=[x]))
    assert isinstance(q[0], Int8Conv2d) and q[0].pre_pad == (0, 1, 0, 1)
    assert q(x).shape == m(x).shape == (4, 4, 4, 4)
    assert _rel_err(q(x), m(x)) < 0.05
    slimkit.save(q, tmp_path)
    r = slimkit.restore(tmp_path, model=lambda: nn.Sequential(_SamePadConv(), nn.ReLU()))
    assert torch.equal(r(x), q(x))


def test_static_int8_refuses_conv_subclass_with_unknown_forward() -> None:
    m = nn.Sequential(_OddConv(3, 4, 3)).eval()
    with pytest.raises(MethodError, match="own forward"):
        slimkit.apply(m, StaticQuant(), Targets(types=("Conv2d",)), Context(calib_data=[torch.randn(1, 3, 6, 6)]))
