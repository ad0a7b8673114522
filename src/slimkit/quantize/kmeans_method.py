"""Deep Compression weight sharing per layer (Han et al. 2016): ``quantize.kmeans``.

Each targeted layer's weights are clustered by 1-D k-means into ``2**bits`` shared values;
the layer then stores one ``bits``-bit index per weight plus the small codebook. Pruned
layers keep their zeros exactly: when a weight tensor has zeros (``keep_zeros``) code 0 is
*reserved* for the value 0 (never trained) and the non-zero weights share the other
``2**bits - 1`` centroids, so sharing never revives a pruned connection.

Optional fine-tuning (``steps > 0``) trains the centroids, not the weights: each centroid's
gradient is the sum of the gradients of the weights that use it (``codebook_grad``), which
is exactly what autograd computes for ``codebook[index]``. Biases (and any other float
parameters) keep training alongside, as in the paper.

Storage: ``huffman: true`` Huffman-codes the indices as the paper's last stage and, for
pruned layers, uses the relative-index sparse form (gaps and indices, each Huffman-coded;
see :mod:`slimkit.quantize.packed`), keeping per layer whichever of packed / Huffman /
sparse is smallest. Those bytes are what the file holds; ``restore`` decodes them.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..core import Context, MethodConfig, Record, Targets, method_config, register_method, register_replay
from ..core.modules import swap_module
from ..core.targets import check_patterns, first_match
from .nonuniform import KMeansInit, assign_nearest, kmeans_share
from .packed import PackedLayer, Storage, layers_of, op_of, packed_record, replay_packed, run_op
from .qat import DEFAULT_TARGETS, train_and_convert


def kmeans_keep_zeros(w: torch.Tensor, bits: int, init: KMeansInit = "linear", iters: int = 50, seed: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means sharing with code 0 reserved for exact zeros.

    Returns ``(codebook [2**bits] float32 with codebook[0] == 0, indices int64 like w)``:
    zeros get index 0, the non-zeros share ``2**bits - 1`` centroids (ascending in
    ``codebook[1:]``) found by Lloyd iterations from ``init``. With no zeros at all this is
    :func:`kmeans_share` with one level fewer would waste a code, so callers use that instead.
    """
    k = 2**bits - 1
    flat = w.detach().reshape(-1)
    nz = flat != 0
    idx = torch.zeros(flat.numel(), dtype=torch.int64)
    x = flat[nz].to(torch.float64)  # [nnz]
    if x.numel() == 0 or k == 0:
        return torch.zeros(2**bits), idx.reshape(w.shape)
    if k == 1:
        c = x.mean().reshape(1)
    elif init == "linear":
        c = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)
    else:
        c, _ = kmeans_share(x, max(1, (k - 1).bit_length()), init=init, iters=0, seed=seed)
        c = c.to(torch.float64)[:k]
    for _ in range(iters):
        a = assign_nearest(x, c)  # [nnz]
        sums = torch.bincount(a, weights=x, minlength=k)
        counts = torch.bincount(a, minlength=k)
        new = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), c)).values
        if torch.equal(new, c):
            break
        c = new
    idx[nz] = assign_nearest(x, c) + 1
    codebook = torch.cat([torch.zeros(1, dtype=torch.float64), c]).to(torch.float32)
    return codebook, idx.reshape(w.shape)


class SharedWeightLayer(nn.Module):
    """Linear / Conv2d whose weight is ``codebook[index]``; the centroids are the trainable parameters."""

    index: torch.Tensor

    def __init__(self, module: nn.Linear | nn.Conv2d, bits: int, init: KMeansInit, keep_zeros: bool) -> None:
        super().__init__()
        self.op = op_of(module)
        self.bits = bits
        w = module.weight.detach()
        self.pinned = bool(keep_zeros and (w == 0).any())
        if self.pinned:
            codebook, index = kmeans_keep_zeros(w, bits, init)
            self.centroids = nn.Parameter(codebook[1:].clone())  # code 0 stays exactly 0
        else:
            codebook, index = kmeans_share(w, bits, init=init)
            self.centroids = nn.Parameter(codebook.clone())
        self.register_buffer("index", index)
        self.bias = nn.Parameter(module.bias.detach().clone()) if module.bias is not None else None

    def codebook(self) -> torch.Tensor:
        if self.pinned:
            return torch.cat([torch.zeros(1, dtype=self.centroids.dtype), self.centroids])
        return self.centroids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.codebook()[self.index]  # backward: scatter-add = codebook_grad
        return run_op(self.op, x, w.to(x.dtype), self.bias)

    def convert(self, storage: Storage = "packed") -> PackedLayer:
        cb = self.codebook().detach().float().reshape(1, -1)
        return PackedLayer.from_codes(self.op, self.index, self.bits, codebook=cb,
                                      bias=self.bias.detach() if self.bias is not None else None,
                                      storage=storage, zero_code=0 if self.pinned else None)


@method_config
class KMeansQuant(MethodConfig):
    """Deep Compression weight sharing: per-layer k-means codebook, optional centroid fine-tuning, Huffman.

    ``layer_bits`` maps module-name patterns (fnmatch globs or ``re:`` regular expressions,
    read as :class:`~slimkit.core.Targets` reads them) to bits and overrides ``bits``
    (first match wins), e.g. ``{"classifier.*": 3}``.
    """

    kind = "quantize.kmeans"
    stage = "quantize"

    bits: int = 4
    layer_bits: dict[str, int] = None  # type: ignore[assignment]
    init: Literal["linear", "density", "random"] = "linear"
    keep_zeros: bool = True
    steps: int = 0
    lr: float = 1e-4
    huffman: bool = True

    def __post_init__(self) -> None:
        if self.layer_bits is None:
            object.__setattr__(self, "layer_bits", {})
        super().__post_init__()

    def validate(self) -> None:
        for key, b in [("bits", self.bits), *((f"layer_bits.{k}", v) for k, v in self.layer_bits.items())]:
            self._require(1 <= b <= 8, key, "an int in [1, 8]", b)
        self._require(self.steps >= 0, "steps", "a non-negative int", self.steps)
        self._require(self.lr > 0, "lr", "a positive float", self.lr)
        check_patterns(self.layer_bits, "layer_bits")

    def bits_for(self, name: str) -> int:
        pattern = first_match(self.layer_bits, name)
        return self.bits if pattern is None else self.layer_bits[pattern]


@register_method(KMeansQuant)
def kmeans(model: nn.Module, config: KMeansQuant, targets: Targets, ctx: Context) -> Record:
    if not targets.types:
        targets = Targets(include=targets.include, exclude=targets.exclude, types=DEFAULT_TARGETS.types)
    layers: dict[str, SharedWeightLayer] = {}
    for name, module in layers_of(model, targets):
        layers[name] = SharedWeightLayer(module, config.bits_for(name), config.init, config.keep_zeros)  # type: ignore
        swap_module(model, name, layers[name])
    storage: Storage = "auto" if config.huffman else "packed"
    packed, final_loss = train_and_convert(model, layers, ctx, config.steps, config.lr, config.kind, storage)
    fixed = sum(-(-m.codes().numel() * m.meta["bits"] // 8) for m in packed.values())
    rec = packed_record(packed, final_loss=final_loss, packed_code_bytes=fixed,
                        storage={n: m.meta["storage"] for n, m in packed.items()},
                        bits={n: m.meta["bits"] for n, m in packed.items()})
    return rec


register_replay(KMeansQuant)(replay_packed)

__all__ = ["KMeansQuant", "SharedWeightLayer", "kmeans_keep_zeros"]
