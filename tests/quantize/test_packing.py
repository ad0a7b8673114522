"""Dense bit-packing of 1-8 bit codes."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimkit.core.errors import ConfigError
from slimkit.quantize.packing import pack_bits, packed_nbytes, unpack_bits


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(1, 8), numel=st.integers(0, 300), seed=st.integers(0, 1000))
def test_round_trip_is_exact_and_dense(bits: int, numel: int, seed: int) -> None:
    codes = torch.randint(0, 2**bits, (numel,), generator=torch.Generator().manual_seed(seed))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(numel, bits) == -(-numel * bits // 8)
    out = unpack_bits(packed, bits, numel)
    assert out.dtype == torch.uint8 and torch.equal(out.long(), codes)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_layout_is_lsb_first_across_byte_boundaries(bits: int) -> None:
    codes = torch.arange(11) % (2**bits)
    # Reference: build the stream as one Python int, code i at bit offset i * bits.
    stream = sum(int(c) << (i * bits) for i, c in enumerate(codes))
    expected = stream.to_bytes(packed_nbytes(11, bits), "little")
    assert bytes(pack_bits(codes, bits).tolist()) == expected


def test_multi_dimensional_codes_and_signed_offsets() -> None:
    ternary = torch.randint(-1, 2, (4, 5, 3), generator=torch.Generator().manual_seed(0))
    packed = pack_bits((ternary + 1).to(torch.uint8), 2)  # offset by -qmin
    back = unpack_bits(packed, 2, ternary.numel()).long().reshape(ternary.shape) - 1
    assert torch.equal(back, ternary)


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"\[0, 7\]"):
        pack_bits(torch.tensor([0, 8]), 3)
    with pytest.raises(ConfigError, match="offset"):
        pack_bits(torch.tensor([-1, 0]), 3)
    with pytest.raises(ConfigError, match="integer"):
        pack_bits(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(ConfigError, match="bits"):
        pack_bits(torch.tensor([0]), 9)
    with pytest.raises(ConfigError, match="at least 2 bytes"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), 3, 5)
