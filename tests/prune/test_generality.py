"""Structured pruning across architectures: the issue's generality suite.

For every model: zero the weights of exactly the units that pruning at the chosen ratio
will remove (so they are the least important), prune channels (and heads where the model
has attention), then check that the output is unchanged, every parameter-carrying module
really shrank (parameters and MACs drop by what the plan removes) and that
save -> restore reproduces the pruned model exactly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.context import call_model
from slimkit.prune import ChannelPrune, HeadPrune
from slimkit.prune.allocation import keep_count
from slimkit.prune.graph import analyze

from .models import FACTORIES

RATIO = 0.4
HAS_HEADS = {"bert", "roberta", "distilbert", "gpt2", "llama_gqa", "t5_encoder", "vit"}
SLOW = {"efficientnet_lite0", "mobilenet_v2"}


def first(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


def macs(model: nn.Module, batch) -> int:
    """Multiply-accumulates of Linear / Conv / HF Conv1D layers, counted with forward hooks."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
        elif isinstance(m, nn.modules.conv._ConvNd):
            total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:  # Conv1D: weight [in, out]
            total += out.numel() * m.weight.shape[0]

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or type(m).__name__ == "Conv1D"]
    with torch.no_grad():
        call_model(model.eval(), batch)
    for h in hs:
        h.remove()
    return total


def zero_units(model: nn.Module, batch, heads: bool, remove: int | None) -> dict[str, list[int]]:
    """Zero every coupled slice of the units pruning will remove; returns the expected kept units."""
    graph = analyze(model, batch)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    gen = torch.Generator().manual_seed(1)
    expected = {}
    for g in graph.groups:
        if g.heads != heads:
            continue
        n_drop = remove if remove is not None else g.n_units - keep_count(g.n_units, RATIO)
        dropped = torch.randperm(g.n_units, generator=gen)[:n_drop].numpy()
        expected[g.name] = sorted(set(range(g.n_units)) - set(dropped.tolist()))
        with torch.no_grad():
            for (param, dim), members in g.members.items():
                pos = np.flatnonzero(np.isin(members, dropped))
                state[param].index_fill_(dim, torch.as_tensor(pos), 0.0)
    return expected


def expected_numel(model: nn.Module, plan: dict[str, dict[str, list[int]]]) -> int:
    total = 0
    for name, p in model.named_parameters():
        dims = plan.get(name, {})
        total += math.prod(len(dims[str(d)]) if str(d) in dims else s for d, s in enumerate(p.shape))
    return total


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in FACTORIES])
def test_prune_zero_units_keeps_output(name: str, tmp_path) -> None:
    model, batch = FACTORIES[name]()
    ctx = slimkit.Context(example_inputs=batch)
    want_channels = zero_units(model, batch, heads=False, remove=None)
    want_heads = zero_units(model, batch, heads=True, remove=1) if name in HAS_HEADS else {}
    assert want_channels, f"{name}: no prunable channel group found"
    with torch.no_grad():
        ref = first(call_model(model.eval(), batch))
    params0, macs0 = sum(p.numel() for p in model.parameters()), macs(model, batch)

    pruned = slimkit.apply(model, ChannelPrune(ratio=RATIO), ctx=ctx)
    rec = slimkit.records(pruned)[-1]
    assert {k: v["kept"] for k, v in rec.data["groups"].items()} == want_channels
    assert sum(p.numel() for p in pruned.parameters()) == expected_numel(model, rec.data["plan"])
    if want_heads:
        before_heads = pruned
        pruned = slimkit.apply(pruned, HeadPrune(heads_per_group=1), ctx=ctx)
        rec_h = slimkit.records(pruned)[-1]
        assert {k: v["kept"] for k, v in rec_h.data["groups"].items()} == want_heads
        assert sum(p.numel() for p in pruned.parameters()) == expected_numel(before_heads, rec_h.data["plan"])

    with torch.no_grad():
        out = first(call_model(pruned, batch))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=1e-4)
    params1, macs1 = sum(p.numel() for p in pruned.parameters()), macs(pruned, batch)
    assert params1 < 0.85 * params0, (params0, params1)
    assert macs1 < 0.85 * macs0, (macs0, macs1)
    # physically smaller: no module keeps a tensor of its old size for a pruned plan entry
    for param, dims in rec.data["plan"].items():
        t = dict(pruned.named_parameters()).get(param, dict(pruned.named_buffers()).get(param))
        for d, kept in dims.items():
            assert t.shape[int(d)] == len(kept)

    slimkit.save(pruned, tmp_path / "m")
    again = slimkit.restore(tmp_path / "m", model=lambda: FACTORIES[name]()[0])
    with torch.no_grad():
        torch.testing.assert_close(first(call_model(again, batch)), out, rtol=0, atol=0)
