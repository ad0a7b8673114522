"""Non-uniform quantisers: levels placed where the weights are, not on an even grid.

* :func:`kmeans_share` - Deep Compression weight sharing (Han et al. 2016): 1-D k-means,
  each weight stores a ``bits``-bit index into a per-layer codebook of ``2**bits`` floats.
* :func:`equal_frequency_bins` - balanced quantisation (Zhou et al. 2017): every level
  gets the same number of weights, so every code is used equally often.
* :func:`log2_quantize` - power-of-two levels (Miyashita 2016, INQ Zhou 2017): a multiply
  by a level is a bit shift.
* :func:`residual_binary` - ``w ~ sum_i alpha_i b_i`` with ``b_i in {-1, +1}``: greedy
  (Guo et al. 2017) or alternating least squares (Xu et al. 2018).

All functions are deterministic and vectorised (no Python loops over weights).
"""
from __future__ import annotations

import itertools
from typing import Literal, NamedTuple

import torch

from ..core.errors import ConfigError
from .affine import check_bits
from .observers import as_rows

KMeansInit = Literal["linear", "density", "random"]


def _flat(w: torch.Tensor) -> torch.Tensor:
    if w.numel() == 0:
        raise ConfigError("cannot quantise an empty tensor", key="w")
    return w.detach().reshape(-1).to(torch.float64)


def assign_nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of a *sorted* 1-D ``codebook`` for every element of ``x``."""
    mids = (codebook[1:] + codebook[:-1]) / 2  # [K - 1] decision boundaries
    return torch.bucketize(x.contiguous(), mids.contiguous())


def _kmeans_init(x: torch.Tensor, k: int, init: KMeansInit, seed: int) -> torch.Tensor:
    if init == "linear":  # evenly over [min, max]: keeps the rare large weights (Han et al.)
        return torch.linspace(float(x.min()), float(x.max()), k, dtype=x.dtype)
    if init == "density":  # evenly over the CDF: levels crowd where the weights are
        xs = torch.sort(x).values
        pos = torch.linspace(0, xs.numel() - 1, k, dtype=torch.float64).round().long()
        return xs[pos]
    if init == "random":
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randint(0, x.numel(), (k,), generator=gen)
        return torch.sort(x[pick]).values
    raise ConfigError(f"expected 'linear', 'density' or 'random', got {init!r}", key="init")


def kmeans_share(
    w: torch.Tensor, bits: int, init: KMeansInit = "linear", iters: int = 50, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep Compression weight sharing: 1-D k-means with ``2**bits`` clusters.

    Lloyd iterations until no assignment changes (or ``iters``); after one sort each
    iteration costs ``O(K log n)``. Empty clusters keep their previous centroid. Han et al.
    found ``init="linear"`` best: it keeps levels for the few large weights that matter.

    Returns ``(codebook [2**bits] float32 ascending, indices int64 shaped like w)``.
    """
    check_bits(bits, 1, 8)
    x = _flat(w)  # [n]
    k = 2**bits
    codebook = _kmeans_init(x, k, init, seed)
    # In 1-D every cluster is a contiguous run of the sorted weights, so one sort plus a
    # prefix sum turns each Lloyd step into K binary searches instead of n.
    xs, order = torch.sort(x)
    csum = torch.cat([torch.zeros(1, dtype=xs.dtype), torch.cumsum(xs, 0)])  # [n + 1]
    n = torch.tensor([xs.numel()])
    zero = torch.zeros(1, dtype=torch.int64)

    def cuts_for(c: torch.Tensor) -> torch.Tensor:  # [K + 1] run boundaries, ties go to the lower level
        mids = (c[1:] + c[:-1]) / 2
        return torch.cat([zero, torch.searchsorted(xs, mids.contiguous(), right=True), n])

    cuts = cuts_for(codebook)
    for _ in range(iters):
        counts = cuts[1:] - cuts[:-1]  # [K]
        sums = csum[cuts[1:]] - csum[cuts[:-1]]  # [K]
        codebook = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), codebook)).values
        new_cuts = cuts_for(codebook)
        if torch.equal(new_cuts, cuts):
            break
        cuts = new_cuts
    idx = torch.empty(xs.numel(), dtype=torch.int64)
    idx[order] = torch.repeat_interleave(torch.arange(k), cuts[1:] - cuts[:-1])
    return codebook.to(torch.float32), idx.reshape(w.shape)


def codebook_grad(grad: torch.Tensor, indices: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Gradient of the shared centroids: the sum of the gradients of the weights that use
    each one (Deep Compression fine-tuning). Returns ``[n_codes]``."""
    return torch.bincount(indices.reshape(-1), weights=grad.detach().reshape(-1).to(torch.float64),
                          minlength=n_codes).to(grad.dtype)


def equal_frequency_bins(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced quantisation: ``2**bits`` bins with (as near as possible) equal counts.

    Weights are ranked; rank ``r`` goes to bin ``r * K // n``; each level is the mean of its
    bin (the MSE-optimal value for that bin). Equal-valued weights may land in adjacent
    bins. Returns ``(codebook [K] float32 non-decreasing, indices int64 shaped like w)``.
    """
    check_bits(bits, 1, 8)
    x = _flat(w)
    k = 2**bits
    order = torch.argsort(x, stable=True)
    bins_sorted = torch.arange(x.numel()) * k // x.numel()  # [n] bin of rank r
    idx = torch.empty_like(bins_sorted)
    idx[order] = bins_sorted
    sums = torch.bincount(idx, weights=x, minlength=k)
    counts = torch.bincount(idx, minlength=k)
    # A bin can only be empty when n < K; give it its neighbour's value so levels stay sorted.
    codebook = torch.where(counts > 0, sums / counts.clamp(min=1), torch.nan)
    codebook = _fill_nan_forward(codebook)
    return codebook.to(torch.float32), idx.reshape(w.shape)


def _fill_nan_forward(c: torch.Tensor) -> torch.Tensor:
    out = c.clone()
    for i in range(out.numel()):  # K <= 256
        if torch.isnan(out[i]):
            out[i] = out[i - 1] if i else out[~torch.isnan(out)][0]
    return out


class Log2Quant(NamedTuple):
    """Power-of-two quantisation: ``values = sign * 2**(e_min - 1 + |codes|)``, 0 where ``codes == 0``."""

    values: torch.Tensor  # like w, float32
    codes: torch.Tensor  # like w, int8: sign * magnitude index in [1, 2**(bits-1) - 1], 0 = zero
    e_min: int  # exponent of the smallest non-zero level


def log2_quantize(w: torch.Tensor, bits: int, e_max: int | None = None) -> Log2Quant:
    """Round every weight to the nearest of ``{0, +-2**e : e_min <= e <= e_max}``.

    One bit holds the sign and the other ``bits - 1`` hold ``2**(bits-1) - 1`` exponents
    plus the zero code. ``e_max`` defaults to INQ's ``floor(log2(4/3 max|w|))``, the largest
    level the biggest weight rounds to. Rounding is to the nearest level in the linear
    domain (ties away from zero): between ``2**e`` and ``2**(e+1)`` the boundary is
    ``1.5 * 2**e``, and below ``2**e_min / 2`` a weight becomes 0.
    """
    check_bits(bits, 2, 8)
    x = w.detach().to(torch.float64)
    amax = float(x.abs().max()) if x.numel() else 0.0
    if e_max is None:
        e_max = int(torch.floor(torch.log2(torch.tensor(4.0 * amax / 3.0)))) if amax > 0 else 0
    n_exp = 2 ** (bits - 1) - 1
    e_min = e_max - n_exp + 1
    mag = x.abs()
    # Nearest power of two in the linear domain: e = floor(log2(|x| / 1.5)) + 1.
    e = torch.floor(torch.log2(mag / 1.5)) + 1
    e = torch.clamp(e, max=e_max)
    is_zero = mag < 2.0 ** (e_min - 1)
    e = torch.clamp(e, min=e_min)
    magnitude_code = torch.where(is_zero, torch.zeros_like(e), e - e_min + 1)  # [0, n_exp]
    sign = torch.where(x < 0, -1.0, 1.0)
    codes = (sign * magnitude_code).to(torch.int8)
    values = torch.where(is_zero, torch.zeros_like(x), sign * torch.exp2(e))
    return Log2Quant(values.to(torch.float32), codes, e_min)


def log2_dequantize(codes: torch.Tensor, e_min: int) -> torch.Tensor:
    """Real values of :func:`log2_quantize` codes."""
    c = codes.to(torch.float64)
    vals = torch.sign(c) * torch.exp2(c.abs() + (e_min - 1))
    return torch.where(c == 0, torch.zeros_like(c), vals).to(torch.float32)


def _sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so every code is a valid +-1."""
    return torch.where(x < 0, -1.0, 1.0).to(x.dtype)


def _greedy(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = rows.clone()  # [C, N] residual
    alphas, codes = [], []
    for _ in range(k):
        b = _sign(r)
        a = r.abs().mean(dim=1)  # [C] optimal scale for sign(r)
        r = r - a[:, None] * b
        alphas.append(a)
        codes.append(b)
    return torch.stack(alphas, dim=1), torch.stack(codes, dim=1)  # [C, k], [C, k, N]


def _best_codes(rows: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Optimal +-1 codes for fixed scales: nearest of the ``2**k`` sums ``sum_i +-alpha_i``."""
    k = alphas.shape[1]
    patterns = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=k)), dtype=rows.dtype)  # [2^k, k]
    levels = alphas @ patterns.T  # [C, 2^k]
    sorted_levels, order = torch.sort(levels, dim=1)
    mids = (sorted_levels[:, 1:] + sorted_levels[:, :-1]) / 2  # [C, 2^k - 1]
    pos = torch.searchsorted(mids.contiguous(), rows.contiguous())  # [C, N]
    which = order.gather(1, pos)  # [C, N] pattern index
    return patterns[which].permute(0, 2, 1)  # [C, k, N]


def _least_squares_scales(rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Scales minimising ``||w - alpha^T B||^2`` per row for fixed codes ``B [C, k, N]``."""
    gram = codes @ codes.transpose(1, 2)  # [C, k, k]
    rhs = (codes @ rows[:, :, None])[..., 0]  # [C, k]
    return (torch.linalg.pinv(gram) @ rhs[:, :, None])[..., 0]  # pinv: duplicate codes are rank-deficient


def residual_binary(
    w: torch.Tensor, k: int, mode: Literal["greedy", "alternating"] = "greedy", iters: int = 10,
    axis: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-bit binary approximation ``w ~ sum_{i<k} alpha_i * b_i``, ``b_i in {-1, +1}``.

    * ``"greedy"`` (Guo et al. 2017): binarise the residual ``k`` times,
      ``b_i = sign(r)``, ``alpha_i = mean|r|``, ``r -= alpha_i b_i``.
    * ``"alternating"`` (Xu et al. 2018): start from greedy, then alternate the exact
      least-squares scales for fixed codes and the exact best codes for fixed scales (the
      nearest of the ``2**k`` level sums). Each step cannot increase the error, so it ends
      at or below greedy's error.

    ``axis=None`` uses one set of scales for the tensor; ``axis=0`` one per output row.
    Returns ``(scales float32 [k] or [C, k], codes int8 [k, *w.shape])``; rebuild with
    :func:`residual_dequantize`.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 8:
        raise ConfigError(f"expected an int in [1, 8], got {k!r}", key="k")
    if mode not in ("greedy", "alternating"):
        raise ConfigError(f"expected 'greedy' or 'alternating', got {mode!r}", key="mode")
    rows = as_rows(w, axis).to(torch.float64)  # [C, N]
    alphas, codes = _greedy(rows, k)
    if mode == "alternating":
        for _ in range(iters):
            alphas = _least_squares_scales(rows, codes)
            new_codes = _best_codes(rows, alphas)
            if torch.equal(new_codes, codes):
                break
            codes = new_codes
        alphas = _least_squares_scales(rows, codes)
    # [C, k, N] -> [k, *w.shape]
    moved_shape = w.shape if axis is None else w.movedim(axis, 0).shape
    out = codes.permute(1, 0, 2).reshape(k, *moved_shape)
    if axis is not None:
        out = out.movedim(1, (axis % w.dim()) + 1)
    scales = alphas[0] if axis is None else alphas
    return scales.to(torch.float32), out.to(torch.int8).contiguous()


def residual_dequantize(scales: torch.Tensor, codes: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """``sum_i scales_i * codes_i`` for :func:`residual_binary` output (float32, like ``codes[0]``)."""
    c = codes.to(torch.float32)  # [k, *shape]
    if axis is None:
        return torch.einsum("k,k...->...", scales, c)
    axis = axis % (c.dim() - 1)
    shape = [1] * (c.dim() - 1)
    shape[axis] = scales.shape[0]
    out = torch.zeros(c.shape[1:])
    for i in range(c.shape[0]):
        out += scales[:, i].reshape(shape) * c[i]
    return out
