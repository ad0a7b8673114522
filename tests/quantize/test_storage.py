"""Byte account of quantised tensors."""
from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import ConfigError
from slimkit.quantize.granularity import per_group
from slimkit.quantize.huffman import huffman_encode
from slimkit.quantize.nonuniform import kmeans_share
from slimkit.quantize.packing import pack_bits
from slimkit.quantize.storage import bits_per_weight, n_groups, quantized_nbytes


def test_affine_per_group_matches_what_would_be_written() -> None:
    w = torch.randn(32, 96)
    qp = per_group(w, 32, bits=3, symmetric=False)
    codes = qp.quantize(w) - qp.qmin
    written = (pack_bits(codes, 3).numel()
               + qp.scale.numel() * qp.scale.element_size()  # float32 scales
               + qp.zero_point.numel() * 1)  # 3-bit zero points fit in a byte
    assert quantized_nbytes(w.numel(), 3, group_size=32, zero_point=True) == written


def test_codebook_and_huffman_sizes() -> None:
    w = torch.randn(64, 64)
    codebook, idx = kmeans_share(w, 4)
    plain = quantized_nbytes(w.numel(), 4, scale_bytes=0, codebook_size=16)
    assert plain == w.numel() // 2 + 16 * 4
    coded = quantized_nbytes(w.numel(), 4, scale_bytes=0, codebook_size=16, codes=idx, huffman=True)
    data, _ = huffman_encode(idx)
    assert coded == len(data) + 16 + codebook.numel() * 4  # payload + length table + codebook
    assert coded < plain
    with pytest.raises(ConfigError, match="codes"):
        quantized_nbytes(w.numel(), 4, huffman=True)
    with pytest.raises(ConfigError, match="elements"):
        quantized_nbytes(10, 4, codes=idx, huffman=True)


def test_bits_per_weight_and_groups() -> None:
    n = 4096 * 128
    nbytes = quantized_nbytes(n, 4, group_size=128, scale_bytes=2)  # fp16 scale per 128 weights
    assert bits_per_weight(nbytes, n) == pytest.approx(4 + 16 / 128)
    assert n_groups(10, 4) == 3 and n_groups(10, None) == 1 and n_groups(0, None) == 0
    assert quantized_nbytes(10, 1, scale_bytes=0) == 2
    with pytest.raises(ConfigError):
        n_groups(10, 0)
