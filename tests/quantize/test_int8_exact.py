"""torch's int8 kernels (fbgemm / oneDNN) under slimkit's chosen settings equal exact integer math.

These run on every CPU and again under forced lower ISAs (``make test-int8-avx2``): with the
weight codes :mod:`slimkit.core.cpu` picks, the kernels must not saturate, least of all on the
worst-case input (activation codes 255 against maximal weight codes on adjacent pairs).
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from slimkit.core import cpu
from slimkit.quantize.int8_modules import Int8Conv2d, Int8Linear

from .int8_reference import exact_conv, exact_linear, worst_case_linear

pytestmark = pytest.mark.int8


def _dynamic_close(m: Int8Linear, x: torch.Tensor) -> float:
    """Largest difference from the exact result, relative to the largest exact output."""
    ref = exact_linear(m, x)
    return float((m(x).double() - ref).abs().max() / ref.abs().max())


def _static_steps(m: Int8Linear | Int8Conv2d, x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference from the exact result in output quantization steps."""
    return float((m(x).double() - ref).abs().max() / float(m.act_qparams[2]))


def test_dynamic_linear_matches_integer_math_on_random_and_worst_case_inputs() -> None:
    torch.manual_seed(0)
    lin, x = nn.Linear(48, 24), torch.randn(16, 48) * 3
    assert _dynamic_close(Int8Linear.from_float(lin, "dynamic"), x) < 1e-5
    worst, xw = worst_case_linear()
    m = Int8Linear.from_float(worst, "dynamic")
    assert int(m.weight_int8.max()) == cpu.weight_qmax()  # the worst case really uses the top code
    assert _dynamic_close(m, xw) < 1e-5


def test_static_linear_and_conv_match_integer_math() -> None:
    torch.manual_seed(0)
    lin, x = nn.Linear(40, 12), torch.rand(8, 40) * 4 - 1  # range [-1, 3]
    m = Int8Linear.from_float(lin, "static")
    m.set_act_ranges(4 / 255, 64, 0.05, 128)
    assert _static_steps(m, x, exact_linear(m, x)) <= 1.0  # at most a rounding tie apart
    conv, xc = nn.Conv2d(4, 8, 3, padding=1), torch.rand(2, 4, 6, 6)
    c = Int8Conv2d.from_float(conv)
    c.set_act_ranges(1 / 255, 0, 0.02, 128)
    assert _static_steps(c, xc, exact_conv(c, xc)) <= 1.0


def test_static_worst_case_is_exact() -> None:
    worst, xw = worst_case_linear()
    m = Int8Linear.from_float(worst, "static")
    m.set_act_ranges(1 / 255, 0, 64 / 255, 0)  # inputs codes 255; outputs (32) inside the range
    assert _static_steps(m, xw, exact_linear(m, xw)) <= 1.0
    conv = nn.Conv2d(8, 4, 1)
    with torch.no_grad():
        conv.weight.fill_(0.25)
        conv.bias.zero_()
    c = Int8Conv2d.from_float(conv)
    c.set_act_ranges(1 / 255, 0, 4 / 255, 0)
    xc = torch.ones(1, 8, 3, 3)
    assert _static_steps(c, xc, exact_conv(c, xc)) <= 1.0


def test_detected_isa_matches_what_the_torch_kernel_does() -> None:
    """The detector must follow the kernels (including forcing variables): 8-bit weight codes
    saturate on the worst case exactly when it says there is no VNNI (an explicit
    ``SLIMKIT_INT8_ISA`` override states a choice, not a fact, so detection runs without it)."""
    isa = cpu.int8_isa({k: v for k, v in os.environ.items() if k != cpu.OVERRIDE_ENV})
    worst, xw = worst_case_linear()
    m = Int8Linear.from_float(worst, "dynamic", qmax=cpu.FULL_QMAX)
    saturated = _dynamic_close(m, xw) > 0.1  # half the sum is lost when pairs clip at 32767
    assert saturated == (not isa.has_vnni), isa.line()
