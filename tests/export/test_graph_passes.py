"""Sibling-Linear fusion (packed QKV) on exported graphs, alone and under PT2E int8."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.export.graph_passes import fuse_sibling_linears

LINEAR = torch.ops.aten.linear.default


class QKV(nn.Module):
    """Three projections of one input (one without bias is left out: biases must agree),
    plus a Linear of a different tensor that must not join the group."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, 2 * d)
        self.nobias = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)  # [B, T, d], [B, T, d], [B, T, 2d]
        h = torch.cat([q * k, v, self.nobias(x)], dim=-1)  # [B, T, 4d]
        return self.out(torch.relu(h))  # [B, T, d]


def _linears(gm: torch.fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is LINEAR)


def test_fuses_only_siblings_with_matching_bias_and_keeps_the_numbers() -> None:
    torch.manual_seed(0)
    m = QKV().eval()
    x = torch.randn(2, 5, 32)
    dims = ({0: torch.export.Dim("b"), 1: torch.export.Dim("t")},)
    gm = torch.export.export(m, (x,), dynamic_shapes=dims).module()
    before = _linears(gm)
    assert fuse_sibling_linears(gm) == 1
    assert _linears(gm) == before - 2  # q, k, v -> one; nobias and out untouched
    fused = [n for n in gm.graph.nodes if n.target is LINEAR and n.args[1].target == "_fused_linear_0_weight"]
    assert len(fused) == 1 and fused[0].meta["val"].shape[-1] == 4 * 32  # q + k + v widths
    torch.testing.assert_close(gm(x), m(x), rtol=1e-5, atol=1e-5)
    assert gm(torch.randn(3, 7, 32)).shape == (3, 7, 32)
    assert fuse_sibling_linears(gm) == 0  # nothing left to fuse


def test_pt2e_int8_quantizes_the_fused_linear_and_matches_the_unfused_program() -> None:
    pytest.importorskip("torchao")
    from slimkit.export.pt2e import quantize_pt2e

    torch.manual_seed(0)
    m = QKV().eval()
    calib = [torch.randn(4, 6, 32) for _ in range(3)]
    progs = {f: quantize_pt2e(m, (calib[0],), [(c,) for c in calib], static=True, fuse_linears=f)
             for f in (False, True)}
    for fuse, p in progs.items():
        n_lin = _linears(p.graph_module)
        n_q = sum(1 for n in p.graph.nodes if "dequantize_per_channel" in str(n.target))
        assert n_q == n_lin == (3 if fuse else 5)  # every Linear, fused or not, has int8 weights
    x = torch.randn(4, 6, 32)
    ref = m(x)
    err = {f: (p.module()(x) - ref).abs().max().item() for f, p in progs.items()}
    # Same per-channel weight scales and input quantisation; only where the quantizer puts
    # observers after the projections differs (unfused, the cat shares their ranges).
    assert err[True] <= 1.5 * err[False] + 1e-3, err
    assert err[True] < 0.05 * ref.abs().max().item(), err


def test_keep_float_leaves_the_named_modules_out_of_int8(tmp_path) -> None:
    pytest.importorskip("torchao")
    import slimkit
    from slimkit.core import Context, MethodError, Targets, records
    from slimkit.export.pt2e import Pt2eExport

    torch.manual_seed(0)
    m = QKV().eval()
    calib = [(torch.randn(4, 6, 32),) for _ in range(2)]
    ctx = Context(calib_data=calib, example_inputs=calib[0])
    ctx.extras["export_dir"] = tmp_path
    out = slimkit.apply(m, Pt2eExport(keep_float=("out", "re:no.*"), check=False), Targets(), ctx)
    assert records(out)[-1].data["float_modules"] == ["out", "nobias"]
    program = torch.export.load(str(tmp_path / "model.pt2"))
    quantized = [n for n in program.graph.nodes if n.target is LINEAR and "dequantize" in str(n.args[1].target)]
    assert _linears(program.graph_module) == 3 and len(quantized) == 1  # only the fused q/k/v is int8
    with pytest.raises(MethodError, match="matches no module"):
        slimkit.apply(m, Pt2eExport(keep_float=("missing*",)), Targets(), ctx)


class _IntPositions(nn.Module):
    """RoBERTa's position ids: integer arithmetic on the mask that x86 annotations match."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(20, d)
        self.pos = nn.Embedding(40, d)
        self.lin = nn.Linear(d, d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.int()
        positions = (torch.cumsum(mask, dim=1) + 1) * mask + 1  # [B, T] int32
        return self.lin(self.tok(input_ids) + self.pos(positions.long()))


def test_static_pt2e_leaves_integer_tensors_unobserved() -> None:
    pytest.importorskip("torchao")
    from slimkit.export.pt2e import quantize_pt2e

    torch.manual_seed(0)
    model = _IntPositions().eval()
    batches = [{"input_ids": torch.randint(0, 20, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
               for _ in range(3)]
    program = quantize_pt2e(model, batches[0], batches, static=True)
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert any("quantize_per_tensor" in op for op in ops)  # the float Linear is still quantized
    with torch.no_grad():
        got = program.module()(**batches[1])
        want = model(**batches[1])
    cos = nn.functional.cosine_similarity(got.flatten(1), want.flatten(1)).mean()
    assert cos > 0.99
