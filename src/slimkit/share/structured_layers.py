"""Linear layers whose weight is tied inside the matrix: hashed, block-circulant, block-Toeplitz.

Each stores a small real vector ``weight`` (the only weight parameter, so the state dict
and the saved file hold just it) and rebuilds the ``out x in`` index map from its
structure alone (a non-persistent buffer: restore recomputes it from the Record).

- :class:`HashedLinear` (HashedNets, Chen et al. 2015) materializes the virtual weight
  with one gather, then runs a dense ``F.linear``: it saves **bytes, not time** (the
  materialized matrix is as large as the dense one, and the gather comes on top).
- :class:`CirculantLinear` (block-circulant, Cheng et al. 2015 / CirCNN) multiplies with
  ``product="fft"``: rfft of the input blocks, a spectral product, irfft: ``O(n log n)``
  per block instead of ``O(n^2)``. The complex spectral product is written as one *real*
  batched matmul over frequencies (``[Xr Xi] @ [[Cr Ci], [-Ci Cr]]``): it counts as
  ordinary MACs, and ``torch.export`` / ``torch.onnx.export(dynamo=True)`` trace it
  (complex tensors only appear inside the FFT ops).
- :class:`ToeplitzLinear` (block-Toeplitz, ``2b - 1`` parameters per ``b x b`` block):
  ``product="fft"`` embeds each block in a circulant of size ``2b``; ``product="dense"``
  materializes the blocks and runs ``F.linear``.

``product="dense"`` (either structured layer) is a gather + GEMM: plain ops every
exporter handles. Shapes that are not multiples of ``block`` are zero-padded.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import MethodError
from .tying import blocks, circulant_index, hashed_index, toeplitz_index, toeplitz_to_circulant

Product = Literal["fft", "dense"]


class _TiedLinear(nn.Module):
    """``y = x @ table(weight)[index].T + bias``; subclasses define ``index`` and may override ``forward``."""

    index: torch.Tensor

    def __init__(self, in_features: int, out_features: int, n_weights: int, index: torch.Tensor, bias: bool,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(n_weights, dtype=dtype, device=device))  # [n_weights]
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        self.register_buffer("index", index.to(device), persistent=False)  # [out, in] int64

    def table(self) -> torch.Tensor:
        return self.weight

    def materialize(self) -> torch.Tensor:
        """The virtual dense weight ``[out, in]``."""
        flat = torch.index_select(self.table(), 0, self.index.reshape(-1))  # [out*in]
        return flat.reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out]
        return F.linear(x, self.materialize(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"stored={self.weight.numel()}, bias={self.bias is not None}"


class HashedLinear(_TiedLinear):
    """HashedNets Linear: ``W[i, j] = sign(i, j) * weight[bucket(i, j)]``, buckets from ``seed``."""

    def __init__(self, in_features: int, out_features: int, size: int, seed: int, bias: bool = True,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        self.size, self.seed = size, seed
        super().__init__(in_features, out_features, size, hashed_index(out_features, in_features, size, seed),
                         bias, dtype, device)

    def table(self) -> torch.Tensor:
        return torch.cat([self.weight, -self.weight])  # [2*size]: index >= size reads the negated weight

    def extra_repr(self) -> str:
        return super().extra_repr() + f", seed={self.seed}"


def block_circulant_product(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``y[..., i, :] = sum_j circ(c[i, j]) @ x[..., j, :]`` by FFT.

    ``x [..., q, L]`` input blocks, ``c [p, q, L]`` first columns -> ``[..., p, L]``. The spectral
    product is one real bmm over the ``f = L // 2 + 1`` frequencies (4 real MACs per complex
    MAC). Layout matters more than MACs here: the input is transformed along a leading
    frequency axis so the bmm operands need no copy (a permuted bmm operand is copied once per
    frequency), and real / imaginary parts stay interleaved so the bmm output *is* the complex
    spectrum; the only full-size copy is the one that puts the spectrum back in row order for
    a contiguous inverse transform.
    """
    lead = x.shape[:-2]
    p, q, n = c.shape
    xb = x.reshape(-1, q, n)  # [N, q, L]
    rows = xb.shape[0]
    xs = torch.view_as_real(torch.fft.rfft(xb.permute(2, 0, 1), dim=0))  # [f, N, q, 2]
    f = xs.shape[0]
    cs = torch.view_as_real(torch.fft.rfft(c, dim=-1))  # [p, q, f, 2]
    cr, ci = cs[..., 0].permute(2, 1, 0), cs[..., 1].permute(2, 1, 0)  # [f, q, p]
    # rows (j, re | im) x columns (i, re | im): yr = xr cr - xi ci, yi = xr ci + xi cr
    cm = torch.stack([torch.stack([cr, ci], -1), torch.stack([-ci, cr], -1)], dim=2)  # [f, q, 2, p, 2]
    ys = torch.bmm(xs.reshape(f, rows, 2 * q), cm.reshape(f, 2 * q, 2 * p))  # [f, N, 2p]
    spectrum = torch.view_as_complex(ys.reshape(f, rows, p, 2)).permute(1, 2, 0)  # [N, p, f]
    y = torch.fft.irfft(spectrum.contiguous(), n=n, dim=-1)  # [N, p, L]
    return y.reshape(*lead, p, n)


class _BlockLinear(_TiedLinear):
    """Shared shape logic of the block-structured layers: ``p x q`` blocks of ``block x block``."""

    def __init__(self, in_features: int, out_features: int, block: int, per_block: int, index: torch.Tensor,
                 product: Product, bias: bool, dtype: torch.dtype | None, device: torch.device | None) -> None:
        self.block, self.product = block, product
        self.p, self.q = blocks(out_features, block), blocks(in_features, block)
        super().__init__(in_features, out_features, self.p * self.q * per_block, index, bias, dtype, device)

    def _no_torchscript_onnx(self) -> None:
        """The TorchScript ONNX exporter (``dynamo=False``, slimkit's) cannot convert ``aten::fft_rfft``."""
        if torch.onnx.is_in_onnx_export() and torch.jit.is_tracing():
            raise MethodError(f"{type(self).__name__} with product 'fft' cannot be exported by the TorchScript ONNX "
                              "exporter (torch.onnx.export dynamo=False, opset 17: no conversion for aten::fft_rfft); "
                              "use product: dense for ONNX, or torch.export / torch.onnx.export(dynamo=True)")

    def _blocks_in(self, x: torch.Tensor, length: int) -> torch.Tensor:  # [..., in] -> [..., q, length]
        pad = self.q * self.block - self.in_features
        xb = F.pad(x, (0, pad)).reshape(*x.shape[:-1], self.q, self.block) if pad else \
            x.reshape(*x.shape[:-1], self.q, self.block)
        return F.pad(xb, (0, length - self.block)) if length > self.block else xb

    def _out(self, y: torch.Tensor) -> torch.Tensor:  # [..., p, >= block] -> [..., out]
        y = y[..., : self.block].reshape(*y.shape[:-2], self.p * self.block)[..., : self.out_features]
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", block={self.block}, product={self.product}"


class CirculantLinear(_BlockLinear):
    """Block-circulant Linear: ``weight [p*q*block]`` holds each block's first column."""

    def __init__(self, in_features: int, out_features: int, block: int, product: Product = "fft", bias: bool = True,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__(in_features, out_features, block, block, circulant_index(out_features, in_features, block),
                         product, bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out]
        if self.product == "dense":
            return super().forward(x)
        self._no_torchscript_onnx()
        c = self.weight.reshape(self.p, self.q, self.block)
        return self._out(block_circulant_product(self._blocks_in(x, self.block), c))


class ToeplitzLinear(_BlockLinear):
    """Block-Toeplitz Linear: ``weight [p*q*(2*block - 1)]`` holds each block's defining vector."""

    def __init__(self, in_features: int, out_features: int, block: int, product: Product = "dense",
                 bias: bool = True, dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__(in_features, out_features, block, 2 * block - 1,
                         toeplitz_index(out_features, in_features, block), product, bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out]
        if self.product == "dense":
            return super().forward(x)
        self._no_torchscript_onnx()
        c = toeplitz_to_circulant(self.weight.reshape(self.p, self.q, 2 * self.block - 1))  # [p, q, 2b]
        return self._out(block_circulant_product(self._blocks_in(x, 2 * self.block), c))


__all__ = ["CirculantLinear", "HashedLinear", "ToeplitzLinear", "block_circulant_product"]
