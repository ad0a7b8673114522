"""FFT MACs (``aten::_fft_r2c`` / ``_fft_c2r`` / ``_fft_c2c``) and the circulant layers' counts by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimkit.measure import count_macs, profile
from slimkit.measure.counter import fft_macs
from slimkit.share.structured_layers import CirculantLinear, HashedLinear, ToeplitzLinear


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_fft_formula() -> None:
    assert fft_macs(8, 1, real=False) == 2 * 8 * 3  # (n/2) log2 n complex MACs, 4 real MACs each
    assert fft_macs(8, 3, real=True) == 3 * 8 * 3  # real in or out: half
    assert fft_macs(1, 5, real=False) == 0
    assert fft_macs(12, 1, real=False) == round(2 * 12 * math.log2(12))


@pytest.mark.parametrize("fn,expected", [
    (lambda x: torch.fft.fft(x), 6 * 16 * 4),  # a real input runs r2c (two-sided): half a complex transform
    (lambda x: torch.fft.rfft(x), 6 * 16 * 4),
    (lambda x: torch.fft.fft(x.to(torch.complex64)), 6 * 2 * 16 * 4),  # c2c, 6 rows of 16
    (lambda x: torch.fft.irfft(torch.fft.rfft(x), n=16), 2 * 6 * 16 * 4),  # r2c + c2r
    (lambda x: torch.fft.fft2(x.reshape(3, 2, 16).to(torch.complex64)), 3 * 2 * 32 * 5),  # one 2-D transform of 32
])
def test_fft_ops_count(fn, expected: int) -> None:
    assert count_macs(Fn(fn), torch.randn(6, 16)) == expected


def test_complex_matmul_counts_four_real_macs() -> None:
    a = torch.randn(4, 5, dtype=torch.complex64)
    b = torch.randn(5, 3, dtype=torch.complex64)
    assert count_macs(Fn(lambda x: x @ b), a) == 4 * 4 * 5 * 3


@pytest.mark.parametrize("n_in,n_out,block,rows", [(96, 64, 32, 5), (384, 1536, 64, 2), (13, 10, 4, 3)])
def test_circulant_layer_macs_match_the_hand_formula(n_in: int, n_out: int, block: int, rows: int) -> None:
    layer = CirculantLinear(n_in, n_out, block).eval()
    p, q, f = -(-n_out // block), -(-n_in // block), block // 2 + 1
    per_fft = block * math.log2(block)  # one real transform of length `block`
    expected = (round((rows * q + p * q) * per_fft)  # rfft of the input blocks and of the weight's columns
                + f * rows * (2 * q) * (2 * p)  # the spectral product as a real bmm: 4 real MACs per complex MAC
                + round(rows * p * per_fft))  # irfft of the output blocks
    prof = profile(layer, torch.randn(rows, n_in))
    assert prof.macs == pytest.approx(expected, abs=2)
    assert set(prof.macs_by_op) == {"aten::_fft_r2c", "aten::bmm", "aten::_fft_c2r"}
    assert not prof.uncounted_ops
    if block >= 64:
        assert prof.macs < rows * n_in * n_out  # the point of the structure: fewer MACs than the dense layer


def test_toeplitz_fft_counts_transforms_of_twice_the_block() -> None:
    layer = ToeplitzLinear(16, 8, 4, "fft").eval()
    rows, p, q, n = 3, 2, 4, 8
    expected = round((rows * q + p * q) * n * 3) + (n // 2 + 1) * rows * 2 * q * 2 * p + round(rows * p * n * 3)
    assert profile(layer, torch.randn(rows, 16)).macs == expected


def test_materialized_layers_count_the_dense_gemm_and_store_few_bytes() -> None:
    layer = HashedLinear(64, 32, 100, seed=0).eval()
    with torch.no_grad():
        layer.weight.normal_(generator=torch.Generator().manual_seed(0))
        layer.bias.fill_(0.5)
    prof = profile(layer, torch.randn(7, 64))
    assert prof.macs == 7 * 64 * 32  # the gather is 0 MACs, F.linear is dense
    assert prof.params_total == 100 + 32
    assert prof.bytes_on_disk == (100 + 32) * 4  # the index map is rebuilt from the seed, never stored


def test_circulant_memory_access_reads_the_small_weight_once() -> None:
    layer = CirculantLinear(96, 64, 32).eval()
    x = torch.randn(5, 96)
    prof = profile(layer, x)
    assert prof.weight_read_bytes == (layer.weight.numel() + 64) * 4  # first columns (one rfft) + bias
    assert prof.activation_read_bytes > x.numel() * 4  # the input, then every intermediate spectrum
    assert prof.activation_write_bytes >= 5 * 64 * 4
    assert prof.mac_cost_bytes == prof.weight_read_bytes + prof.activation_read_bytes + prof.activation_write_bytes
