"""Block-diagonal Linear: ``lowrank.block_diagonal``.

The weight keeps only ``blocks`` diagonal blocks of size ``out/blocks x in/blocks``: output
group ``g`` reads only input group ``g``. Unlike the tied layers of :mod:`slimkit.share`
this one *is* faster than the dense layer on a CPU: one ``bmm`` over the blocks does
``1/blocks`` of the dense MACs with GEMMs still large enough to run at full speed (the
ratios measured at MiniLM shapes are in docs/sharing.md). The initialisation is the
least-squares projection of the dense weight (its diagonal blocks; everything off the
diagonal is dropped), which loses most of a trained layer's function: plan a recovery step
(distillation or fine-tuning) after it, as for channel grouping in ShuffleNet-style
networks, and a gate (``gate: latency``) to keep only the layers where it pays.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core import Context, MethodError, Record, Targets, method_config, register_method, register_replay
from .gate import GateOptions
from .linear_swap import replace_linears, replay_linears


class BlockDiagonalLinear(nn.Module):
    """``y[..., g*mb:(g+1)*mb] = x[..., g*nb:(g+1)*nb] @ weight[g] + bias`` for ``g < blocks``."""

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = True,
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
        super().__init__()
        if blocks < 1 or in_features % blocks or out_features % blocks:
            raise ValueError(f"{blocks} blocks do not divide a Linear {in_features} -> {out_features}")
        self.in_features, self.out_features, self.blocks = in_features, out_features, blocks
        nb, mb = in_features // blocks, out_features // blocks
        self.weight = nn.Parameter(torch.zeros(blocks, nb, mb, dtype=dtype, device=device))  # [k, in/k, out/k]
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out]
        lead = x.shape[:-1]
        xb = x.reshape(-1, self.blocks, self.in_features // self.blocks).transpose(0, 1)  # [k, N, in/k]
        y = torch.bmm(xb, self.weight).transpose(0, 1).reshape(*lead, self.out_features)  # [..., out]
        return y + self.bias if self.bias is not None else y

    def materialize(self) -> torch.Tensor:
        """The dense ``[out, in]`` weight (zeros off the diagonal blocks)."""
        return torch.block_diag(*self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks}, " \
               f"bias={self.bias is not None}"


def diagonal_blocks(weight: torch.Tensor, blocks: int) -> torch.Tensor:
    """The diagonal blocks of ``weight [out, in]`` as ``[k, in/k, out/k]`` (the least-squares projection)."""
    mb, nb = weight.shape[0] // blocks, weight.shape[1] // blocks
    return torch.stack([weight[g * mb:(g + 1) * mb, g * nb:(g + 1) * nb].T for g in range(blocks)])


@method_config
class BlockDiagonalLowrank(GateOptions):
    """Block-diagonal Linear: keep ``blocks`` diagonal blocks of each weight, multiply them with one bmm.

    ``blocks`` must divide both features of every targeted Linear. Cuts MACs and parameters
    by ``blocks`` and is measured faster than dense on CPU; drops all cross-block weights, so
    it needs a recovery step after it.
    """

    kind = "lowrank.block_diagonal"
    stage = "shrink"
    blocks: int = 4

    def validate(self) -> None:
        super().validate()
        self._require(self.blocks >= 2, "blocks", "an int >= 2", self.blocks)


@register_method(BlockDiagonalLowrank)
def block_diagonal(model: nn.Module, config: BlockDiagonalLowrank, targets: Targets, ctx: Context) -> Record:
    for name, m in targets.select(model):
        if type(m) is nn.Linear and (m.in_features % config.blocks or m.out_features % config.blocks):
            raise MethodError(f"lowrank.block_diagonal: {config.blocks} blocks do not divide layer {name!r} "
                              f"({m.in_features} -> {m.out_features}); exclude it or pick another `blocks`")

    def build(dense: nn.Linear, k: int) -> tuple[nn.Module, dict[str, Any]]:
        layer = BlockDiagonalLinear(dense.in_features, dense.out_features, config.blocks, dense.bias is not None,
                                    dtype=dense.weight.dtype, device=dense.weight.device)
        with torch.no_grad():
            layer.weight.copy_(diagonal_blocks(dense.weight, config.blocks))
            if dense.bias is not None:
                layer.bias.copy_(dense.bias)  # type: ignore[union-attr]
        return layer, {"blocks": config.blocks}

    return replace_linears(model, config, targets, ctx, build)


@register_replay(BlockDiagonalLowrank)
def replay_block_diagonal(model: nn.Module, record: Record) -> None:
    def make(spec: dict[str, Any], n_in: int, n_out: int, bias: bool, like: dict[str, Any]) -> nn.Module:
        blocks = spec.get("blocks")
        if type(blocks) is not int:
            raise ValueError(f"lowrank.block_diagonal: 'blocks' must be an int, got {blocks!r}")
        return BlockDiagonalLinear(n_in, n_out, blocks, bias, **like)

    replay_linears(model, record, make)


__all__ = ["BlockDiagonalLinear", "BlockDiagonalLowrank", "diagonal_blocks"]
