"""Pruning fixes found by the support matrix (``tests/test_support_matrix.py``).

- scores plus a computed full-size tensor along the heads freezes the heads (removing one
  would leave the operands' shapes mismatched);
- a parameter table indexed by a constant index (Swin's relative position bias) shrinks
  with the heads it is added to;
- ``prune.layers`` refuses a block that changes its input's shape, naming it;
- ``prune.heads`` names an ``nn.MultiheadAttention`` it cannot split.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.errors import MethodError
from slimkit.prune import HeadPrune, LayerPrune
from slimkit.prune.structured import units

H, D, T = 4, 8, 5


class BiasedAttention(nn.Module):
    """Multi-head self-attention whose scores get a per-head bias: a buffer, or a table indexed per pair."""

    def __init__(self, table: bool) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(H * D, H * D) for _ in range(4))
        self.table = table
        if table:
            self.bias_table = nn.Parameter(torch.randn(2 * T - 1, H))
            pos = torch.arange(T)
            self.register_buffer("index", (pos[:, None] - pos[None, :] + T - 1).reshape(-1), persistent=False)
        else:
            self.register_buffer("bias", torch.randn(1, H, T, T))
        self.head_dim = D
        self.num_heads = H

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        q, k, v = (p(x).view(b, T, -1, D).transpose(1, 2) for p in (self.q, self.k, self.v))  # [B, H, T, D]
        if self.table:
            bias = self.bias_table[self.index].view(T, T, -1).permute(2, 0, 1).unsqueeze(0)  # [1, H, T, T]
        else:
            bias = self.bias * 1.0  # a computed tensor the analysis cannot label
        att = torch.softmax(q @ k.transpose(-1, -2) / D ** 0.5 + bias, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, T, -1))


def _batch() -> torch.Tensor:
    return torch.randn(2, T, H * D, generator=torch.Generator().manual_seed(0))


def test_heads_added_to_a_computed_full_size_tensor_are_frozen() -> None:
    torch.manual_seed(0)
    model = BiasedAttention(table=False).eval()
    assert not any(g["heads"] for g in units(model, _batch()).values())
    with pytest.raises(MethodError, match="no attention-head group"):
        slimkit.apply(model, HeadPrune(heads_per_group=1), ctx=slimkit.Context(example_inputs=_batch()))


def test_indexed_bias_table_shrinks_with_its_heads() -> None:
    torch.manual_seed(0)
    model = BiasedAttention(table=True).eval()
    with torch.no_grad():  # head 2 contributes nothing: its q/k/v rows, o columns and table column are zero
        for p in (model.q, model.k, model.v):
            p.weight[2 * D:3 * D] = 0
            p.bias[2 * D:3 * D] = 0
        model.o.weight[:, 2 * D:3 * D] = 0
        model.bias_table[:, 2] = 0
        ref = model(_batch())
    pruned = slimkit.apply(model, HeadPrune(heads_per_group=1), ctx=slimkit.Context(example_inputs=_batch()))
    assert pruned.bias_table.shape == (2 * T - 1, H - 1)
    assert pruned.q.out_features == (H - 1) * D
    with torch.no_grad():
        torch.testing.assert_close(pruned(_batch()), ref, atol=1e-5, rtol=1e-5)


class Stages(nn.Module):
    """Two stages in a ModuleList; the first doubles the channels (a downsampling CNN stage)."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.stages:
            x = torch.relu(s(x))
        return x


def test_layer_drop_refuses_a_block_that_changes_the_shape() -> None:
    x = torch.randn(1, 4, 6, 6)
    ctx = slimkit.Context(example_inputs=x)
    with pytest.raises(MethodError, match=r"block stages\.0 \(Conv2d\) maps shape \[1, 4, 6, 6\] to \[1, 8, 6, 6\]"):
        slimkit.apply(Stages(), LayerPrune(drop=(0,)), ctx=ctx)
    out = slimkit.apply(Stages(), LayerPrune(drop=(1,)), ctx=ctx)  # the shape-keeping block can go
    assert len(out.stages) == 1 and out(x).shape == (1, 8, 6, 6)


def test_head_prune_names_an_unsplittable_multihead_attention() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    with pytest.raises(MethodError, match=r"'attn' \(nn.MultiheadAttention"):
        slimkit.apply(M().eval(), HeadPrune(heads_per_group=1),
                      ctx=slimkit.Context(example_inputs=torch.randn(2, 3, 16)))
