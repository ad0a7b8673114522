"""Range observers: watch tensors (weights once, activations over calibration batches) and
pick the real range ``[min, max]`` that the affine grid should cover.

Every observer has ``observe(x)`` (call once per batch) and ``range() -> (min, max)``;
``qparams()`` turns that range into ``(scale, zero_point)`` with
:func:`slimkit.quantize.affine.qparams`. With ``axis=None`` they track one range for the
whole tensor (``range()`` returns scalars); with ``axis=k`` one per index of dim ``k``
(per-channel, ``range()`` returns ``[C]`` tensors).

Min-max is exact but lets one outlier stretch the grid and waste levels; the clipping
observers (percentile, MSE, KL) trade a little clipping error on rare values for finer
steps on the bulk. They need the value distribution, so they keep a uniform random
sample of at most ``max_samples`` values per row (bottom-k sampling with a seeded
generator: deterministic, unbiased over all batches, bounded memory) besides the exact
min / max.
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import ConfigError, MethodError
from .affine import check_bits, dequantize, qparams, qrange, quantize


def as_rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as float rows ``[C, N]``: one row per index of ``axis`` (one row if ``None``)."""
    x = x.detach().float()
    if axis is None:
        return x.reshape(1, -1)
    if not -x.dim() <= axis < x.dim():
        raise ConfigError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}", key="axis")
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer:
    """Base class: tracks exact per-row min / max; subclasses refine :meth:`_range`."""

    def __init__(self, *, axis: int | None = None, bits: int = 8, symmetric: bool = True,
                 name: str | None = None) -> None:
        check_bits(bits)
        self.name = name  # what is observed (e.g. "encoder.fc1 input"), for error messages
        self.axis = axis
        self.bits = bits
        self.symmetric = symmetric
        self.reset()

    def reset(self) -> None:
        self.min_val: torch.Tensor | None = None  # [C]
        self.max_val: torch.Tensor | None = None  # [C]

    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        rows = as_rows(x, self.axis)  # [C, N]
        if self.min_val is not None and rows.shape[0] != self.min_val.shape[0]:
            raise ConfigError(f"observer saw {self.min_val.shape[0]} channels before, now {rows.shape[0]}",
                              key="axis")
        self._update(rows)

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        self.min_val = lo if self.min_val is None else torch.minimum(self.min_val, lo)
        self.max_val = hi if self.max_val is None else torch.maximum(self.max_val, hi)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.min_val is not None and self.max_val is not None
        return self.min_val, self.max_val

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(min, max)``: scalars for ``axis=None``, else ``[C]`` tensors."""
        if self.min_val is None:
            what = f" of {self.name}" if self.name else ""
            raise MethodError(f"{type(self).__name__}{what} has observed no data; call observe(x) first")
        lo, hi = self._range()
        if self.axis is None:
            return lo.reshape(()), hi.reshape(())
        return lo, hi

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the observed range at this observer's bits / symmetry."""
        lo, hi = self.range()
        return qparams(lo, hi, self.bits, self.symmetric)


class MinMaxObserver(Observer):
    """Exact running min / max (PyTorch's default for weights)."""


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch min / max: ``r <- (1 - momentum) r + momentum r_batch``.

    Used for activations during QAT: one unusual batch moves the range only by ``momentum``.
    The first batch sets the range.
    """

    def __init__(self, momentum: float = 0.01, **kw) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"expected a float in (0, 1], got {momentum!r}", key="momentum")
        self.momentum = momentum
        super().__init__(**kw)

    def _update(self, rows: torch.Tensor) -> None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
            return
        self.min_val = self.min_val + self.momentum * (lo - self.min_val)
        self.max_val = self.max_val + self.momentum * (hi - self.max_val)


class _SampleObserver(Observer):
    """Keeps a uniform random sample of at most ``max_samples`` values per row."""

    def __init__(self, *, max_samples: int = 2**18, seed: int = 0, **kw) -> None:
        if max_samples < 1:
            raise ConfigError(f"expected a positive int, got {max_samples!r}", key="max_samples")
        self.max_samples = max_samples
        self.seed = seed
        super().__init__(**kw)

    def reset(self) -> None:
        super().reset()
        self._gen = torch.Generator().manual_seed(self.seed)
        self._keys: torch.Tensor | None = None  # [C, S] random priorities
        self._samples: torch.Tensor | None = None  # [C, S]

    def _update(self, rows: torch.Tensor) -> None:
        super()._update(rows)
        keys = torch.rand(rows.shape, generator=self._gen)  # [C, N]
        if self._keys is not None and self._samples is not None:
            keys = torch.cat([self._keys, keys], dim=1)
            rows = torch.cat([self._samples, rows], dim=1)
        if keys.shape[1] > self.max_samples:
            # Bottom-k sampling: the k smallest random keys are a uniform sample of everything seen.
            idx = torch.topk(keys, self.max_samples, dim=1, largest=False).indices  # [C, k]
            keys, rows = keys.gather(1, idx), rows.gather(1, idx)
        self._keys, self._samples = keys, rows

    @property
    def samples(self) -> torch.Tensor:
        assert self._samples is not None
        return self._samples


class PercentileObserver(_SampleObserver):
    """Range ``[q(100 - pct), q(pct)]`` of the observed values: clips the rarest outliers."""

    def __init__(self, pct: float = 99.99, **kw) -> None:
        if not 50.0 < pct <= 100.0:
            raise ConfigError(f"expected a float in (50, 100], got {pct!r}", key="pct")
        self.pct = pct
        super().__init__(**kw)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.tensor([1.0 - self.pct / 100.0, self.pct / 100.0])
        lo, hi = torch.quantile(self.samples, q, dim=1)  # [2, C] -> [C], [C]
        return lo, hi


class MSEObserver(_SampleObserver):
    """Clipping range minimising the mean squared quantisation error (grid search).

    Tries the min-max range shrunk by ``grid`` ratios evenly spaced in ``[min_ratio, 1]``
    and keeps, per row, the one with the lowest MSE of ``fake_quant`` on the sample.
    Ratio 1 (min-max) is always a candidate, so the result is never worse than min-max on
    the observed data.
    """

    def __init__(self, grid: int = 100, min_ratio: float = 0.05, **kw) -> None:
        if grid < 1 or not 0.0 < min_ratio <= 1.0:
            raise ConfigError(f"expected grid >= 1 and min_ratio in (0, 1], got {grid!r}, {min_ratio!r}",
                              key="grid")
        self.grid = grid
        self.min_ratio = min_ratio
        super().__init__(**kw)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo0, hi0 = super()._range()  # [C]
        x = self.samples  # [C, S]
        qmin, qmax = qrange(self.bits, self.symmetric)
        best_err = torch.full_like(lo0, float("inf"))
        best_lo, best_hi = lo0.clone(), hi0.clone()
        for r in torch.linspace(self.min_ratio, 1.0, self.grid).tolist():
            lo, hi = lo0 * r, hi0 * r
            scale, zp = qparams(lo, hi, self.bits, self.symmetric)  # [C]
            s, z = scale[:, None], zp[:, None]
            err = ((dequantize(quantize(x, s, z, qmin, qmax), s, z) - x) ** 2).mean(dim=1)  # [C]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo, best_lo)
            best_hi = torch.where(better, hi, best_hi)
        return best_lo, best_hi


def kl_threshold(hist: np.ndarray, n_quant: int, eps: float = 1e-10) -> int:
    """Number of histogram bins to keep so the clipped, quantised distribution stays closest
    in KL divergence to the original one (TensorRT entropy calibration, Migacz 2017).

    For each candidate ``i`` in ``[n_quant, len(hist)]``: P = ``hist[:i]`` with all
    outliers added to its last bin; Q = ``hist[:i]`` merged into ``n_quant`` equal chunks,
    each chunk's mass spread evenly over its non-empty bins. Returns the ``i`` with the
    smallest ``KL(P || Q)``.
    """
    hist = hist.astype(np.float64)
    n_bins = hist.size
    if n_bins <= n_quant:
        return n_bins
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_i, best_kl = n_bins, np.inf
    for i in range(n_quant, n_bins + 1):
        p = hist[:i].copy()
        p[-1] += tail[i]
        nonzero = p > 0
        chunk = (np.arange(i) * n_quant) // i  # [i] chunk of each bin
        mass = np.bincount(chunk, weights=hist[:i], minlength=n_quant)
        count = np.bincount(chunk, weights=nonzero.astype(np.float64), minlength=n_quant)
        q = np.where(nonzero, mass[chunk] / np.maximum(count[chunk], 1.0), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum <= 0 or q_sum <= 0:
            continue
        p, q = p[nonzero] / p_sum, np.maximum(q[nonzero] / q_sum, eps)
        kl = float(np.sum(p * np.log(p / q)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i


class KLObserver(_SampleObserver):
    """Entropy (KL-divergence) calibration as in TensorRT: a symmetric range ``[-t, t]``.

    A histogram of ``|x|`` with ``n_bins`` bins over ``[0, max|x|]`` is searched with
    :func:`kl_threshold` using ``2**(bits-1)`` quantisation bins (``2**bits`` when
    ``symmetric=False``, meant for non-negative activations such as ReLU outputs). The
    returned range is ``[-t, t]`` intersected with the observed ``[min, max]``. Cost is
    ``O(n_bins**2)`` per row, so use it per tensor, not per channel of a wide layer.
    """

    def __init__(self, n_bins: int = 2048, **kw) -> None:
        if n_bins < 16:
            raise ConfigError(f"expected an int >= 16, got {n_bins!r}", key="n_bins")
        self.n_bins = n_bins
        super().__init__(**kw)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo0, hi0 = super()._range()  # [C]
        amax = torch.maximum(lo0.abs(), hi0.abs())
        n_quant = 2 ** (self.bits - 1) if self.symmetric else 2**self.bits
        thresholds = []
        for row, top in zip(self.samples.abs(), amax.tolist()):
            if top <= 0:
                thresholds.append(0.0)
                continue
            hist = torch.histc(row, bins=self.n_bins, min=0.0, max=top).numpy()
            i = kl_threshold(hist, min(n_quant, self.n_bins))
            thresholds.append(top * i / self.n_bins)
        t = torch.tensor(thresholds, dtype=torch.float32)
        return torch.maximum(lo0, -t), torch.minimum(hi0, t)
