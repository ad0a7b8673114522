"""Canonical Huffman coding: round trip, optimality bounds, size convention."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.core.errors import ConfigError
from slimkit.quantize.huffman import (
    entropy_bits,
    huffman_code,
    huffman_decode,
    huffman_encode,
    huffman_nbytes,
    huffman_payload_bits,
)
from slimkit.quantize.nonuniform import kmeans_share
from slimkit.quantize.packing import packed_nbytes


def _skewed(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(k, generator=gen) ** 4 + 1e-3
    return torch.multinomial(p, n, replacement=True, generator=gen)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 400), k=st.integers(1, 40), seed=st.integers(0, 1000), shift=st.integers(-5, 5))
def test_round_trip(n: int, k: int, seed: int, shift: int) -> None:
    x = _skewed(n, k, seed) + shift  # negative symbols round-trip too
    data, table = huffman_encode(x)
    assert len(data) == math.ceil(huffman_payload_bits(x) / 8)
    assert torch.equal(huffman_decode(data, table, n), x)


def test_code_is_canonical_prefix_free_and_complete() -> None:
    x = _skewed(5000, 20, 0)
    table = huffman_code(x)
    words = sorted(table.values())
    assert all(not b.startswith(a) for a, b in itertools.pairwise(words))  # sorted => neighbours suffice
    assert sum(2.0 ** -len(w) for w in words) == 1.0  # Kraft equality: a full tree
    counts = torch.bincount(x)
    by_freq = sorted(table, key=lambda s: -int(counts[s]))
    lengths = [len(table[s]) for s in by_freq]
    assert lengths == sorted(lengths)  # more frequent => not longer
    ordered = sorted(table.items(), key=lambda kv: (len(kv[1]), kv[0]))
    values = [int(w, 2) << (64 - len(w)) for _, w in ordered]
    assert values == sorted(values)  # canonical: consecutive codes in (length, symbol) order


@pytest.mark.parametrize("k", [2, 7, 256])
def test_average_length_within_one_bit_of_entropy(k: int) -> None:
    x = _skewed(20_000, k, k)
    h = entropy_bits(x)
    avg = huffman_payload_bits(x) / x.numel()
    assert h <= avg < h + 1


def test_single_symbol_and_empty() -> None:
    x = torch.full((9,), 3)
    data, table = huffman_encode(x)
    assert table == {3: "0"} and len(data) == 2
    assert torch.equal(huffman_decode(data, table, 9), x)
    assert huffman_encode(torch.zeros(0, dtype=torch.int64)) == (b"", {})
    assert huffman_nbytes(torch.zeros(0, dtype=torch.int64)) == 0


def test_long_codes_from_fibonacci_counts() -> None:
    fib = [1, 1]
    while len(fib) < 22:
        fib.append(fib[-1] + fib[-2])
    x = torch.from_numpy(np.repeat(np.arange(22), fib))
    x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))]
    data, table = huffman_encode(x)
    assert max(len(w) for w in table.values()) == 21  # a maximally skewed tree
    assert torch.equal(huffman_decode(data, table, x.numel()), x)


def test_nbytes_convention_and_gain_over_packing_on_kmeans_indices() -> None:
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    _, idx = kmeans_share(w, 4)  # Gaussian weights: inner clusters are used far more often
    data, _ = huffman_encode(idx)
    assert huffman_nbytes(idx, alphabet_size=16) == len(data) + 16
    assert huffman_nbytes(idx) == len(data) + int(idx.max()) + 1
    assert huffman_nbytes(idx, alphabet_size=16) < 0.95 * packed_nbytes(idx.numel(), 4)
    with pytest.raises(ConfigError, match="alphabet_size"):
        huffman_nbytes(idx, alphabet_size=4)
    with pytest.raises(ConfigError, match=">= 0"):
        huffman_nbytes(torch.tensor([-1, 2]))


def test_bad_streams_and_tables_are_config_errors() -> None:
    x = _skewed(100, 5, 1)
    data, table = huffman_encode(x)
    with pytest.raises(ConfigError, match="symbols"):
        huffman_decode(data[: len(data) // 2], table, 100)
    bad = dict(table)
    first = min(bad)
    bad[first] = bad[first] + "1"
    with pytest.raises(ConfigError, match="canonical"):
        huffman_decode(data, bad, 100)
    with pytest.raises(ConfigError, match="integer"):
        huffman_code(torch.randn(4))
