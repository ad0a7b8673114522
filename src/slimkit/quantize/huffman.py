"""Canonical Huffman coding of integer symbols (codebook indices, quantised codes).

Deep Compression's last stage: k-means indices are far from uniform, so an entropy code
stores them in fewer bits than fixed-width packing (the saving Han et al. report:
docs/quantization.md#figures-behind-design-choices-in-the-code). Codes are *canonical* (sorted by length,
then symbol, consecutive values), so the code is fully described by each symbol's code
length; that is what the stored table holds.

Size convention (:func:`huffman_nbytes`): payload ``ceil(total_bits / 8)`` bytes plus a
table of one byte (the code length, 0 = unused) per symbol of the alphabet
``0 .. alphabet_size - 1``, as DEFLATE stores it. The element count and tensor shape are
metadata that a saved artifact records anyway and are not counted.
"""
from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from ..core.errors import ConfigError

MAX_CODE_LEN = 57  # decoder reads codes from 64-bit words at any bit offset; needs > fib(59) ~ 1e12 symbols


def _symbols(symbols: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = symbols.detach().cpu().numpy() if isinstance(symbols, torch.Tensor) else np.asarray(symbols)
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"expected integer symbols, got dtype {arr.dtype}", key="symbols")
    return arr.reshape(-1).astype(np.int64)


def code_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Huffman code length per symbol from symbol counts (ties broken by symbol, deterministic).

    A lone symbol gets length 1 so the stream still has one bit per element.
    """
    items = [(c, s) for s, c in sorted(counts.items()) if c > 0]
    if not items:
        return {}
    if len(items) == 1:
        return {items[0][1]: 1}
    lengths = {s: 0 for _, s in items}
    heap = [(c, i, [s]) for i, (c, s) in enumerate(items)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_code(lengths: dict[int, int]) -> dict[int, str]:
    """Canonical code words (bit strings) for given code lengths."""
    code, prev_len, out = 0, 0, {}
    for sym, length in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= length - prev_len
        out[sym] = format(code, f"0{length}b")
        code += 1
        prev_len = length
    return out


def huffman_code(symbols: torch.Tensor | np.ndarray) -> dict[int, str]:
    """Canonical Huffman code ``{symbol: bit string}`` for the symbols' empirical frequencies."""
    vals, counts = np.unique(_symbols(symbols), return_counts=True)
    return canonical_code(code_lengths(dict(zip(vals.tolist(), counts.tolist()))))


def huffman_encode(symbols: torch.Tensor | np.ndarray) -> tuple[bytes, dict[int, str]]:
    """Encode symbols (flattened, row-major) into a bit stream, MSB first, zero-padded to a byte.

    Returns ``(data, table)``; decode with ``huffman_decode(data, table, numel)``.
    """
    flat = _symbols(symbols)
    table = huffman_code(flat)
    if not table:
        return b"", table
    syms = np.array(sorted(table), dtype=np.int64)  # [K]
    max_len = max(len(c) for c in table.values())
    bit_rows = np.zeros((syms.size, max_len), dtype=np.uint8)  # [K, L] code bits, left-aligned
    lengths = np.zeros(syms.size, dtype=np.int64)
    for i, s in enumerate(syms.tolist()):
        word = table[s]
        bit_rows[i, : len(word)] = np.frombuffer(word.encode(), dtype=np.uint8) - ord("0")
        lengths[i] = len(word)
    pos = np.searchsorted(syms, flat)  # [n]
    used = np.arange(max_len)[None, :] < lengths[pos][:, None]  # [n, L]
    stream = bit_rows[pos][used]  # row-major keeps symbol order
    return np.packbits(stream).tobytes(), table


def huffman_decode(data: bytes, table: dict[int, str], numel: int) -> torch.Tensor:
    """Inverse of :func:`huffman_encode`: ``numel`` symbols as a 1-D int64 tensor.

    Vectorised canonical decoding: in a canonical code the left-justified code values of
    each length form consecutive ranges ordered by length, so the code length starting at
    every bit position is one ``searchsorted`` of the next ``max_len`` bits; a short Python
    loop then hops from code to code.
    """
    if numel == 0:
        return torch.zeros(0, dtype=torch.int64)
    if not table:
        raise ConfigError("empty code table for a non-empty stream", key="table")
    lengths = {s: len(c) for s, c in table.items()}
    if canonical_code(lengths) != table:
        raise ConfigError("table is not a canonical Huffman code", key="table")
    max_len = max(lengths.values())
    if max_len > MAX_CODE_LEN:
        raise ConfigError(f"code length {max_len} exceeds {MAX_CODE_LEN}", key="table")
    raw = np.frombuffer(data, dtype=np.uint8)
    n_pos = raw.size * 8
    # words[b] = the 8 bytes starting at byte b as a big-endian uint64.
    padded = np.concatenate([raw, np.zeros(8, dtype=np.uint8)]).astype(np.uint64)
    words = np.zeros(raw.size, dtype=np.uint64)
    for k in range(8):
        words |= padded[k: k + raw.size] << np.uint64(56 - 8 * k)
    pos = np.arange(n_pos, dtype=np.uint64)
    window = (words[pos >> np.uint64(3)] << (pos & np.uint64(7))) >> np.uint64(64 - max_len)  # [bits]
    # Canonical layout: per length l, first code value, count and first slot in sorted order.
    order = sorted(lengths, key=lambda s: (lengths[s], s))
    sorted_syms = np.array(order, dtype=np.int64)
    count = np.bincount([lengths[s] for s in order], minlength=max_len + 1)  # [L + 1]
    first = np.zeros(max_len + 1, dtype=np.int64)
    ends = np.zeros(max_len, dtype=np.uint64)  # left-justified end of each length's range
    code = 0
    for length in range(1, max_len + 1):
        code <<= 1
        first[length] = code
        code += int(count[length])
        ends[length - 1] = code << (max_len - length)
    slot = np.concatenate([[0], np.cumsum(count)])[:-1]  # [L + 1] first slot of each length
    len_at = np.searchsorted(ends, window, side="right") + 1  # [bits]; max_len + 1 = no code
    len_at[len_at > max_len] = 0
    len_list = len_at.tolist()
    starts: list[int] = []
    p = 0
    for _ in range(numel):
        if p >= n_pos or len_list[p] == 0:
            raise ConfigError(f"stream ended or is corrupt after {len(starts)} of {numel} symbols", key="data")
        starts.append(p)
        p += len_list[p]
    at = np.array(starts, dtype=np.int64)
    ln = len_at[at]
    prefix = (window[at] >> (max_len - ln).astype(np.uint64)).astype(np.int64)
    return torch.from_numpy(sorted_syms[slot[ln] + prefix - first[ln]])


def entropy_bits(symbols: torch.Tensor | np.ndarray) -> float:
    """Shannon entropy of the symbols' empirical distribution, in bits per symbol."""
    _, counts = np.unique(_symbols(symbols), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def huffman_payload_bits(symbols: torch.Tensor | np.ndarray) -> int:
    """Total bits of the Huffman-coded symbols (no padding, no table)."""
    vals, counts = np.unique(_symbols(symbols), return_counts=True)
    lengths = code_lengths(dict(zip(vals.tolist(), counts.tolist())))
    return int(sum(lengths[v] * c for v, c in zip(vals.tolist(), counts.tolist())))


def huffman_nbytes(symbols: torch.Tensor | np.ndarray, alphabet_size: int | None = None) -> int:
    """Stored bytes: ``ceil(payload_bits / 8)`` + one table byte per alphabet symbol.

    ``alphabet_size`` defaults to ``max(symbols) + 1`` (pass ``2**bits`` for codebook
    indices). Symbols must be non-negative.
    """
    flat = _symbols(symbols)
    if flat.size == 0:
        return 0
    if int(flat.min()) < 0:
        raise ConfigError("huffman_nbytes counts a table over 0..alphabet_size-1; symbols must be >= 0",
                          key="symbols")
    top = int(flat.max()) + 1
    if alphabet_size is None:
        alphabet_size = top
    elif alphabet_size < top:
        raise ConfigError(f"alphabet_size {alphabet_size} is smaller than max symbol + 1 = {top}",
                          key="alphabet_size")
    return math.ceil(huffman_payload_bits(flat) / 8) + alphabet_size
