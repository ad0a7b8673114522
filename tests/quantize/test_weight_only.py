"""Weight-only quantisation: RTN / GPTQ / AWQ math, the packed modules and the registered method."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import Context, Targets
from slimkit.core.errors import ConfigError, MethodError
from slimkit.quantize import WeightOnlyConv2d, WeightOnlyLinear, WeightOnlyQuant
from slimkit.quantize.awq import awq_scales
from slimkit.quantize.gptq import HessianAccumulator, gptq_quantize, hessian_from_inputs
from slimkit.quantize.rtn import dequantize_weight, output_error, rtn_quantize
from slimkit.quantize.wo_modules import stored_nbytes


def correlated_inputs(m: int = 1024, k: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5
    return torch.randn(m, k, generator=g) @ mix + 0.1 * torch.randn(m, k, generator=g)  # [M, K]


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(bits: int, group_size: int | None, act_order: bool) -> None:
    x = correlated_inputs()
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    rtn = dequantize_weight(*rtn_quantize(w, bits, group_size, symmetric=False))
    codes, scales, zeros = gptq_quantize(w, hessian_from_inputs(x), bits, group_size, act_order=act_order)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    assert scales.shape == (48, 1 if group_size is None else 128 // group_size)
    gptq = dequantize_weight(codes, scales, zeros)
    assert output_error(x, w, gptq) < 0.8 * output_error(x, w, rtn)


def test_gptq_with_identity_hessian_is_rtn() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    for got, want in zip(gptq_quantize(w, torch.eye(64), 4, 32, damp=0.0), rtn_quantize(w, 4, 32, False)):
        assert torch.equal(got, want)


def test_hessian_accumulator_matches_one_shot() -> None:
    x = correlated_inputs(300, 16)
    acc = HessianAccumulator(16)
    for chunk in x.split(70):
        acc.add(chunk)
    assert torch.allclose(acc.value(), hessian_from_inputs(x), rtol=1e-5, atol=1e-6)


def test_rtn_error_is_within_half_a_step() -> None:
    w = torch.randn(8, 64)
    codes, scales, zeros = rtn_quantize(w, 4, 16, symmetric=False)
    step = scales.repeat_interleave(16, dim=1)
    assert bool(((dequantize_weight(codes, scales, zeros) - w).abs() <= step / 2 + 1e-6).all())
    with pytest.raises(ConfigError, match="group_size"):
        rtn_quantize(w, 4, 24)


def test_awq_beats_rtn_with_outlier_channels() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1024, 128, generator=g)
    x[:, :4] *= 30.0  # a few salient input channels
    w = torch.randn(64, 128, generator=g)
    s = awq_scales(w, x.abs().mean(0), 4, 32, x=x)
    awq = dequantize_weight(*rtn_quantize(w * s, 4, 32, False)) / s
    rtn = dequantize_weight(*rtn_quantize(w, 4, 32, False))
    assert output_error(x, w, awq) < 0.7 * output_error(x, w, rtn)
    assert float(s[:4].mean()) > float(s[4:].mean())  # salient channels are scaled up
    # the diagonal proxy (no x) still prefers scaling the salient channels
    s_proxy = awq_scales(w, x.abs().mean(0), 4, 32)
    assert float(s_proxy[:4].mean()) > float(s_proxy[4:].mean())


@pytest.mark.parametrize("bits,group_size,kernel", [(8, None, "int8pack"), (4, 32, "int4pack"), (4, 64, "int4pack")])
def test_kernel_matches_dequantised_forward(bits: int, group_size: int | None, kernel: str) -> None:
    lin = nn.Linear(128, 32)
    mod = WeightOnlyLinear(128, 32, bits, group_size, symmetric=bits == 8)
    mod.set_quantized(*rtn_quantize(lin.weight, bits, group_size, bits == 8))
    mod.bias.data.copy_(lin.bias.data)
    x = torch.randn(2, 5, 128)
    assert mod.kernel == kernel
    y_kernel = mod(x)
    mod.use_kernel = False
    assert mod.kernel == "dequant"
    assert torch.allclose(y_kernel, mod(x), atol=1e-4, rtol=1e-4)


def test_packed_sizes() -> None:
    assert WeightOnlyLinear(64, 32, 4, 32, symmetric=False).qweight.numel() == 64 * 32 // 2
    m3 = WeightOnlyLinear(64, 32, 3, None, symmetric=True)
    assert m3.qweight.numel() == (64 * 32 * 3 + 7) // 8 and m3.zeros.numel() == 0
    m8 = WeightOnlyLinear(64, 32, 8, None, symmetric=True)
    assert m8.qweight.dtype == torch.int8 and stored_nbytes(m8) == 64 * 32 + 32 * 4


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))


@pytest.mark.parametrize("algorithm", ["rtn", "gptq", "awq"])
@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32), (3, None)])
def test_method_save_restore(tmp_path, algorithm: str, bits: int, group_size: int | None) -> None:
    model = _mlp()
    calib = [correlated_inputs(32, 64, seed=i) for i in range(4)]
    q = slimkit.apply(model, WeightOnlyQuant(bits=bits, group_size=group_size, algorithm=algorithm),
                      ctx=Context(calib_data=calib))
    assert isinstance(q[0], WeightOnlyLinear) and isinstance(model[0], nn.Linear)  # caller's model untouched
    rec = slimkit.records(q)[-1]
    assert set(rec.data["layers"]) == {"0", "2"}
    assert all(e["bits"] == bits and e["algorithm"] == algorithm for e in rec.data["layers"].values())
    assert rec.summary["weight_bytes"] < rec.summary["weight_bytes_fp32"] * (bits + 2.5) / 32  # + scales (+ AWQ input scale)
    x = calib[0]
    with torch.no_grad():
        y, y0 = q(x), model(x)
    rel = float((y - y0).norm() / y0.norm())
    assert rel < {8: 0.01, 4: 0.15, 3: 0.3}[bits]
    slimkit.save(q, tmp_path)
    r = slimkit.restore(tmp_path, model=_mlp)
    with torch.no_grad():
        assert torch.allclose(r(x), y, atol=1e-5)


def test_calibrated_algorithms_need_calib_data() -> None:
    with pytest.raises(MethodError, match="calib_data"):
        slimkit.apply(_mlp(), WeightOnlyQuant(bits=4, algorithm="gptq"))
    with pytest.raises(ConfigError, match="bits"):
        WeightOnlyQuant(bits=1)
    with pytest.raises(MethodError, match="group_size"):
        slimkit.apply(_mlp(), WeightOnlyQuant(bits=4, group_size=48))


def test_gptq_beats_rtn_through_the_method() -> None:
    model = _mlp()
    calib = [correlated_inputs(64, 64, seed=i) for i in range(4)]
    ctx = Context(calib_data=calib)
    x = torch.cat(calib)
    errs = {}
    for algo in ("rtn", "gptq"):
        q = slimkit.apply(model, WeightOnlyQuant(bits=3, algorithm=algo), Targets(include=("0",)), ctx)
        with torch.no_grad():
            errs[algo] = float(((q[0](x) - model[0](x)) ** 2).mean())
    assert errs["gptq"] < errs["rtn"]


def test_conv2d_rtn_and_unused_layer_falls_back(tmp_path) -> None:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 16))

    model = make()
    q = slimkit.apply(model, WeightOnlyQuant(bits=4))
    assert isinstance(q[0], WeightOnlyConv2d)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert float((q(x) - model(x)).norm() / model(x).norm()) < 0.2
    slimkit.save(q, tmp_path)
    with torch.no_grad():
        assert torch.allclose(slimkit.restore(tmp_path, model=make)(x), q(x), atol=1e-5)
    # a Linear that never sees calibration input is quantised with RTN and recorded as such
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    g = slimkit.apply(WithUnused(), WeightOnlyQuant(bits=4, algorithm="gptq"), ctx=Context(calib_data=[torch.randn(4, 8)]))
    layers = slimkit.records(g)[-1].data["layers"]
    assert layers["used"]["algorithm"] == "gptq" and layers["unused"]["algorithm"] == "rtn"
