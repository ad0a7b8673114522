"""The blockwise window kernel equals the dense masked reference, and costs O(n*w)."""
from __future__ import annotations

import pytest
import torch

from slimkit.attention.window_math import (
    band_mask,
    dense_window_attention,
    dense_window_mask,
    window_attention,
    window_macs,
)


def _qkv(b: int, h: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g) for _ in range(3))


@pytest.mark.parametrize("n,w,glob", [(16, 4, ()), (17, 4, ()), (5, 8, ()), (23, 3, (0,)),
                                      (20, 4, (0, 7, 19)), (9, 2, (0, 100)), (6, 2, ()), (10, 3, (4,))])
def test_blockwise_matches_dense(n: int, w: int, glob: tuple[int, ...]) -> None:
    q, k, v = _qkv(2, 3, n, 8, seed=n * 10 + w)
    got = window_attention(q, k, v, w, global_tokens=glob)
    ref = dense_window_attention(q, k, v, w, global_tokens=glob)
    assert got.shape == (2, 3, n, 8)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_padding_keys_are_ignored() -> None:
    q, k, v = _qkv(2, 2, 13, 4, seed=3)
    valid = torch.ones(2, 13, dtype=torch.bool)
    valid[1, 9:] = False  # second sequence is 9 tokens long
    got = window_attention(q, k, v, 3, global_tokens=(0,), key_valid=valid)
    ref = dense_window_attention(q, k, v, 3, global_tokens=(0,), key_valid=valid)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the real tokens of sequence 1 equal running it alone, unpadded
    alone = window_attention(q[1:, :, :9], k[1:, :, :9], v[1:, :, :9], 3, global_tokens=(0,))
    torch.testing.assert_close(got[1:, :, :9], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()


def test_window_covering_everything_is_full_attention() -> None:
    q, k, v = _qkv(1, 2, 10, 4, seed=5)
    full = torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1) @ v
    torch.testing.assert_close(window_attention(q, k, v, 10), full, atol=1e-5, rtol=1e-5)


def test_band_mask_is_the_one_sided_window() -> None:
    m = band_mask(3)
    assert m.shape == (3, 9)
    assert m.sum(dim=1).tolist() == [7, 7, 7]  # 2w + 1 keys per query
    dense = dense_window_mask(12, 2)
    assert dense[5].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]


def test_cost_grows_linearly() -> None:
    a, b = window_macs(1024, 64, 1, 32, 12), window_macs(4096, 64, 1, 32, 12)
    assert 3.9 < b / a < 4.1
    dense = 2 * 4096 * 4096 * 32 * 12
    assert b < dense / 8


def test_short_inputs_take_the_dense_path_with_the_same_pattern() -> None:
    """n <= 3w + g: one dense masked call (cheaper than a slab), same result, padding too."""
    q, k, v = _qkv(2, 2, 8, 4, seed=9)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, 5:] = False
    got = window_attention(q, k, v, 3, key_valid=valid)  # 8 <= 9: dense path, band still applies
    ref = dense_window_attention(q, k, v, 3, key_valid=valid)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert window_macs(8, 3, 0, 4, 2) == 2 * 2 * 8 * 8 * 4
    assert window_macs(40, 3, 0, 4, 2) < 2 * 2 * 40 * 40 * 4
