"""Binary and ternary weights (1 and ~1.6 bits per weight).

* BinaryConnect (Courbariaux et al. 2015): ``w_b = sign(w)``, no scale.
* BWN (Rastegari et al. 2016): ``w_b = alpha * sign(w)`` with ``alpha = mean|w|``, the
  least-squares optimal scale for sign codes (one per tensor, or per ``axis``).
* XNOR-Net: the same per output filter (``axis=0``) plus a binarised *input*
  ``sign(x) * K`` with ``K`` the channel-mean of ``|x|`` (:func:`binarize_activations`).
* TWN (Li et al. 2016): codes in {-1, 0, 1}, threshold ``delta = 0.7 * mean|w|``
  (their approximation of the optimum for Gaussian / uniform weights), ``alpha`` = mean
  of the kept ``|w|``.
* TTQ (Zhu et al. 2017): threshold ``t * max|w|`` and two *learned* scales ``Wp`` / ``Wn``
  (:class:`TTQ`).

Codes follow sign(0) = +1 so every binary code is a valid +-1.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError

BinaryMode = Literal["bwn", "binaryconnect", "xnor"]


def _mean_abs(w: torch.Tensor, axis: int | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``|w|`` (over ``mask`` if given): a scalar, or keepdim over all dims but ``axis``."""
    a = w.detach().abs().float()
    m = torch.ones_like(a) if mask is None else mask.float()
    if axis is None:
        return (a * m).sum() / m.sum().clamp(min=1)
    dims = [d for d in range(w.dim()) if d != axis % w.dim()]
    return (a * m).sum(dim=dims, keepdim=True) / m.sum(dim=dims, keepdim=True).clamp(min=1)


def sign_codes(w: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``w >= 0``, ``-1`` elsewhere, as int8."""
    return torch.where(w < 0, -1, 1).to(torch.int8)


def binarize(w: torch.Tensor, mode: BinaryMode = "bwn", axis: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary codes and scale: ``w ~ alpha * codes``.

    ``binaryconnect``: ``alpha = 1``. ``bwn``: ``alpha = mean|w|`` over the tensor, or per
    index of ``axis``. ``xnor``: per output filter (``axis`` defaults to 0).
    Returns ``(codes int8 in {-1, +1} like w, alpha float32 scalar or keepdim-shaped)``.
    """
    if mode not in ("bwn", "binaryconnect", "xnor"):
        raise ConfigError(f"expected 'bwn', 'binaryconnect' or 'xnor', got {mode!r}", key="mode")
    codes = sign_codes(w)
    if mode == "binaryconnect":
        return codes, torch.tensor(1.0)
    if mode == "xnor" and axis is None:
        axis = 0
    return codes, _mean_abs(w, axis)


def sign_ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """``sign(x)`` (sign(0) = +1) whose gradient is the hard-tanh STE: 1 where ``|x| <= clip``,
    else 0 (BinaryNet, Hubara et al. 2016), so latent weights far past +-clip stop moving."""
    s = torch.where(x < 0, -1.0, 1.0).to(x.dtype)
    inside = (x.detach().abs() <= clip).to(x.dtype)
    return s + (x - x.detach()) * inside


def binarize_ste(w: torch.Tensor, mode: BinaryMode = "bwn", axis: int | None = None) -> torch.Tensor:
    """Differentiable ``alpha * sign(w)`` for training binary weights (scale not learned)."""
    _, alpha = binarize(w, mode, axis)
    return alpha.to(w.dtype) * sign_ste(w)


def binarize_activations(x: torch.Tensor, kernel_size: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """XNOR-Net input binarisation of ``x [B, C, ...]``: ``x ~ sign(x) * K``.

    ``K [B, 1, ...]`` is the mean of ``|x|`` over channels; with ``kernel_size`` (2-D inputs)
    it is box-filtered as in the paper so each output position gets the average scale of
    its receptive field.
    """
    if x.dim() < 2:
        raise ConfigError(f"expected input [B, C, ...], got shape {tuple(x.shape)}", key="x")
    k = x.detach().abs().mean(dim=1, keepdim=True)  # [B, 1, ...]
    if kernel_size is not None:
        if x.dim() != 4:
            raise ConfigError("kernel_size needs a 4-D input [B, C, H, W]", key="kernel_size")
        k = F.avg_pool2d(k, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=False)
        k = k[..., : x.shape[2], : x.shape[3]]
    return sign_codes(x), k


def ternarize_twn(w: torch.Tensor, delta_factor: float = 0.7, axis: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN: codes ``sign(w) * [|w| > delta]`` with ``delta = delta_factor * mean|w|`` and
    ``alpha`` the mean of the kept ``|w|`` (0 when nothing is kept).

    Per tensor or per index of ``axis``. Returns ``(codes int8 in {-1, 0, 1}, alpha)``.
    """
    if delta_factor < 0:
        raise ConfigError(f"expected a non-negative float, got {delta_factor!r}", key="delta_factor")
    delta = delta_factor * _mean_abs(w, axis)
    keep = w.detach().abs() > delta
    alpha = _mean_abs(w, axis, keep)
    codes = torch.where(keep, sign_codes(w), torch.zeros((), dtype=torch.int8))
    return codes.to(torch.int8), alpha


class TTQ(nn.Module):
    """Trained Ternary Quantisation: ``w_t = Wp`` where ``w > delta``, ``-Wn`` where
    ``w < -delta``, else 0, with ``delta = threshold * max|w|`` and learned ``Wp``, ``Wn > 0``.

    Gradients (Zhu et al. 2017): ``dL/dWp = sum`` of the output gradient over the positive
    set, ``dL/dWn = -sum`` over the negative set; the latent weight gets the output gradient
    scaled by ``Wp`` / 1 / ``Wn`` on the positive / zero / negative set.
    ``init`` sets both scales to the mean ``|w|`` of their set when a weight is given.
    """

    def __init__(self, threshold: float = 0.05, init: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= threshold < 1.0:
            raise ConfigError(f"expected a float in [0, 1), got {threshold!r}", key="threshold")
        self.threshold = threshold
        wp = wn = 1.0
        if init is not None:
            pos, neg = self.masks(init)
            wp = float(init.detach()[pos].mean()) if pos.any() else 1.0
            wn = float(-init.detach()[neg].mean()) if neg.any() else 1.0
        self.wp = nn.Parameter(torch.tensor(wp))
        self.wn = nn.Parameter(torch.tensor(wn))

    def masks(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``(positive set, negative set)``."""
        delta = self.threshold * w.detach().abs().max()
        return w.detach() > delta, w.detach() < -delta

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        pos, neg = self.masks(w)
        return pos.to(torch.int8) - neg.to(torch.int8)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        pos, neg = self.masks(w)
        p, n = pos.to(w.dtype), neg.to(w.dtype)
        ternary = self.wp * p - self.wn * n  # gradients flow to wp / wn through here
        factor = (self.wp * p + self.wn * n + (1 - p - n)).detach()  # latent-weight gradient scale
        return ternary + (w - w.detach()) * factor
