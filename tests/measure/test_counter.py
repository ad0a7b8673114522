"""MAC counts at the ATen level against analytic formulas."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from slimkit.measure import count_macs, profile, register_mac_formula
from slimkit.measure.counter import _MAC_FORMULAS, attention_macs, conv_macs, matmul_macs, op_key


class Fn(nn.Module):
    """Wrap a function of the inputs as a module, to count functional code."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.fn(*args)


@pytest.mark.parametrize("shape", [(5, 16), (2, 7, 16)])
def test_linear_counts_in_times_out_per_row(shape: tuple[int, ...]) -> None:
    lin = nn.Linear(16, 24)
    rows = 1
    for s in shape[:-1]:
        rows *= s
    assert count_macs(lin, torch.randn(shape)) == rows * 16 * 24
    # no bias: lowers to mm instead of addmm, same count
    assert count_macs(nn.Linear(16, 24, bias=False), torch.randn(shape)) == rows * 16 * 24


def _conv_analytic(n: int, cin: int, cout: int, k: int, h_out: int, w_out: int, groups: int) -> int:
    return n * cout * h_out * w_out * (cin // groups) * k * k


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,dilation,groups",
    [
        (3, 8, 3, 1, 1, 1, 1),  # plain
        (8, 16, 3, 1, 0, 1, 4),  # grouped
        (12, 12, 5, 1, 2, 1, 12),  # depthwise
        (6, 10, 3, 2, 1, 1, 1),  # strided
        (6, 10, 3, 1, 2, 2, 1),  # dilated
        (4, 8, 3, 2, 3, 3, 2),  # everything at once
    ],
)
def test_conv2d_matches_analytic(cin: int, cout: int, k: int, stride: int, padding: int, dilation: int,
                                 groups: int) -> None:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    n, h, w = 2, 17, 13
    out = conv(torch.randn(n, cin, h, w))
    h_out = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    assert tuple(out.shape) == (n, cout, h_out, w_out)
    assert count_macs(conv, torch.randn(n, cin, h, w)) == _conv_analytic(n, cin, cout, k, h_out, w_out, groups)


def test_conv1d_and_transposed_conv() -> None:
    c1 = nn.Conv1d(4, 6, 5, stride=2)
    x = torch.randn(3, 4, 20)
    l_out = (20 - 5) // 2 + 1
    assert count_macs(c1, x) == 3 * 6 * l_out * 4 * 5
    # transposed: each input element is scattered through Cout/g * k*k weights
    ct = nn.ConvTranspose2d(8, 6, 3, stride=2, groups=2)
    x = torch.randn(2, 8, 5, 7)
    assert count_macs(ct, x) == 2 * 8 * 5 * 7 * (6 // 2) * 3 * 3


@pytest.mark.parametrize("backend", [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])
def test_sdpa_counts_two_products(backend: SDPBackend) -> None:
    b, h, t, d = 2, 3, 10, 8
    q, k, v = (torch.randn(b, h, t, d) for _ in range(3))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    prof = profile(Fn(attend), (q, k, v))
    assert prof.macs == b * h * t * t * d * 2
    if backend == SDPBackend.FLASH_ATTENTION:
        assert set(prof.macs_by_op) == {"aten::_scaled_dot_product_flash_attention_for_cpu"}
    else:  # the math fallback decomposes into batched matmuls, counted as such
        assert "aten::_scaled_dot_product_flash_attention_for_cpu" not in prof.macs_by_op


def test_sdpa_cross_attention_lengths_and_value_width() -> None:
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 4)
    assert count_macs(Fn(F.scaled_dot_product_attention), (q, k, v)) == 2 * 6 * 9 * (8 + 4)
    assert attention_macs((1, 6, 2, 8), (1, 9, 2, 8), (1, 9, 2, 4), heads_last=True) == 2 * 6 * 9 * 12


def test_einsum_bmm_baddbmm_matmul() -> None:
    a, b = torch.randn(4, 5, 6), torch.randn(4, 6, 7)
    expected = 4 * 5 * 6 * 7
    assert count_macs(Fn(lambda x, y: torch.einsum("bik,bkj->bij", x, y)), (a, b)) == expected
    assert count_macs(Fn(torch.bmm), (a, b)) == expected
    assert count_macs(Fn(lambda c, x, y: torch.baddbmm(c, x, y)), (torch.randn(4, 5, 7), a, b)) == expected
    # broadcasting matmul [3, 1, 5, 6] @ [2, 6, 7] -> batch 3 x 2
    assert count_macs(Fn(torch.matmul), (torch.randn(3, 1, 5, 6), torch.randn(2, 6, 7))) == 3 * 2 * 5 * 6 * 7
    assert count_macs(Fn(torch.matmul), (torch.randn(6), torch.randn(6, 7))) == 6 * 7
    assert matmul_macs((5, 6), (6,)) == 30


def test_elementwise_and_embedding_are_zero_macs() -> None:
    emb = nn.Embedding(50, 16)
    ids = torch.randint(0, 50, (3, 9))
    prof = profile(emb, ids)
    assert prof.macs == 0
    # reads the 27 looked-up rows and the ids, writes the output: not the whole table
    row_bytes = 27 * 16 * 4
    assert prof.weight_read_bytes == row_bytes
    assert prof.mac_cost_bytes == ids.numel() * 8 + row_bytes + row_bytes
    assert count_macs(Fn(lambda x: torch.relu(x * 2 + 1).softmax(-1)), torch.randn(4, 8)) == 0


def test_functional_and_module_code_count_the_same() -> None:
    lin = nn.Linear(12, 5)
    x = torch.randn(6, 12)
    assert count_macs(Fn(lambda x: F.linear(x, lin.weight, lin.bias)), x) == count_macs(lin, x) == 6 * 12 * 5


@torch.library.custom_op("slimkit_test::outer_sum", mutates_args=())
def outer_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A custom op the built-in table does not know (stands in for e.g. an int8 kernel)."""
    return (a[:, None] * b[None, :]).sum(0)


def test_register_mac_formula_extends_the_table() -> None:
    model = Fn(lambda a, b: torch.ops.slimkit_test.outer_sum(a, b))
    x = (torch.randn(7), torch.randn(3))
    assert count_macs(model, x) == 0  # unknown op: no formula yet, and the profile says so
    assert profile(model, x).uncounted_ops == ["slimkit_test::outer_sum"]
    register_mac_formula("slimkit_test::outer_sum", lambda args, kwargs, out: args[0].numel() * args[1].numel())
    try:
        assert count_macs(model, x) == 21
        assert profile(model, x).uncounted_ops == []
    finally:
        _MAC_FORMULAS.pop("slimkit_test::outer_sum")


def test_op_key_forms() -> None:
    assert op_key("aten.mm") == op_key("aten::mm") == op_key(torch.ops.aten.mm) == "aten::mm"
    assert op_key(torch.ops.aten.mm.default) == "aten::mm.default"
    with pytest.raises(ValueError):
        op_key("mm")


def test_conv_macs_pure_function() -> None:
    # depthwise 3x3 on 8 channels, 4x4 output: 8*16*1*9
    assert conv_macs((1, 8, 4, 4), (8, 1, 3, 3), (1, 8, 4, 4), transposed=False) == 8 * 16 * 9
