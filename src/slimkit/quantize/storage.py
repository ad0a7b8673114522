"""Bytes a quantised tensor takes on disk, for the size account of quantisation methods.

:mod:`slimkit.core.encoding` measures dense and CSR tensors; quantised weights are stored
as packed codes plus side information, counted here with the same honesty:

* codes: ``ceil(numel * bits / 8)`` bytes, densely bit-packed (:mod:`.packing`), or the
  Huffman-coded size with its table (:func:`.huffman.huffman_nbytes`) when ``codes`` and
  ``huffman=True`` are given;
* one scale per group (``scale_bytes`` each, float32 by default; fp16 scales are common
  at <= 4 bits);
* one zero point per group when asymmetric, ``ceil(bits / 8)`` bytes each;
* a codebook of ``codebook_size`` entries (``codebook_bytes`` each) per group for
  weight sharing (k-means, balanced bins).

Shapes / dtypes / element counts are metadata and are not counted (nor are they for
dense tensors in ``core.encoding``).
"""
from __future__ import annotations

import math

import torch

from ..core.errors import ConfigError
from .huffman import huffman_nbytes
from .packing import packed_nbytes


def n_groups(numel: int, group_size: int | None) -> int:
    """Number of parameter groups: 1 per tensor (``None``), else ``ceil(numel / group_size)``."""
    if group_size is None:
        return 1 if numel else 0
    if group_size < 1:
        raise ConfigError(f"expected a positive int or None, got {group_size!r}", key="group_size")
    return math.ceil(numel / group_size)


def quantized_nbytes(
    numel: int,
    bits: int,
    *,
    group_size: int | None = None,
    scale_bytes: int = 4,
    zero_point: bool = False,
    codebook_size: int = 0,
    codebook_bytes: int = 4,
    codes: torch.Tensor | None = None,
    huffman: bool = False,
) -> int:
    """Total stored bytes of one quantised tensor of ``numel`` elements.

    ``group_size`` is the number of elements sharing one scale / zero point / codebook:
    ``None`` per tensor, ``numel // channels`` per channel, e.g. 128 per group. Affine
    weights: ``scale_bytes > 0, codebook_size = 0``. Codebook (k-means) weights: usually
    ``scale_bytes = 0, codebook_size = 2**bits``. ``huffman=True`` needs the non-negative
    integer ``codes`` themselves and replaces the packed-code size by the Huffman size
    (table included), as Deep Compression does.
    """
    if numel < 0 or scale_bytes < 0 or codebook_size < 0 or codebook_bytes < 0:
        raise ConfigError("sizes must be non-negative", key="numel")
    groups = n_groups(numel, group_size)
    if huffman:
        if codes is None:
            raise ConfigError("huffman=True needs the integer codes to count their entropy-coded size",
                              key="codes")
        if codes.numel() != numel:
            raise ConfigError(f"codes has {codes.numel()} elements, expected {numel}", key="codes")
        payload = huffman_nbytes(codes, alphabet_size=2**bits)
    else:
        payload = packed_nbytes(numel, bits)
    side = groups * scale_bytes
    if zero_point:
        side += groups * math.ceil(bits / 8)
    side += groups * codebook_size * codebook_bytes
    return payload + side


def bits_per_weight(nbytes: int, numel: int) -> float:
    """Effective storage cost in bits per element, side information included."""
    return 8.0 * nbytes / numel if numel else 0.0
