"""Dense bit-packing of low-bit integer codes.

``bits``-bit codes are laid end to end in one bit stream, least significant bit first,
and the stream is cut into bytes (also LSB first). Widths that do not divide 8 (3, 5, 6,
7) cross byte boundaries, so ``n`` codes always take exactly ``ceil(n * bits / 8)``
bytes; there is no per-row or per-byte padding. Signed codes (e.g. symmetric affine
codes, ternary {-1, 0, 1}) are stored offset by ``-qmin`` so they are non-negative.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ConfigError
from .affine import check_bits


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes of ``numel`` densely packed ``bits``-bit codes: ``ceil(numel * bits / 8)``."""
    check_bits(bits, 1, 8)
    if numel < 0:
        raise ConfigError(f"expected a non-negative int, got {numel!r}", key="numel")
    return (numel * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` (any shape, any integer dtype) into a 1-D uint8
    tensor of :func:`packed_nbytes` bytes."""
    check_bits(bits, 1, 8)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ConfigError(f"expected an integer tensor, got dtype {codes.dtype}", key="codes")
    flat = codes.detach().reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ConfigError(f"codes must lie in [0, {2**bits - 1}] for {bits} bits, got range "
                          f"[{int(flat.min())}, {int(flat.max())}]; offset signed codes by -qmin", key="codes")
    shifts = np.arange(bits, dtype=np.uint8)
    stream = ((flat.numpy().astype(np.uint8)[:, None] >> shifts) & 1).reshape(-1)  # [n * bits], LSB first
    return torch.from_numpy(np.packbits(stream, bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes as a 1-D uint8 tensor."""
    check_bits(bits, 1, 8)
    need = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() < need:
        raise ConfigError(f"expected a 1-D uint8 tensor of at least {need} bytes, got dtype "
                          f"{packed.dtype} shape {tuple(packed.shape)}", key="packed")
    stream = np.unpackbits(packed.numpy(), bitorder="little", count=numel * bits)  # [numel * bits]
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    codes = (stream.reshape(numel, bits).astype(np.uint16) * weights).sum(axis=1)
    return torch.from_numpy(codes.astype(np.uint8))
