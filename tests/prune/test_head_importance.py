"""Michel et al. 2019 head importance (``prune.heads`` with ``importance="head"``)."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core.context import call_model
from slimkit.prune import HeadPrune
from slimkit.prune.graph import Group, analyze
from slimkit.prune.importance import head_gate_contributions, head_gate_scores
from slimkit.prune.unit_inputs import head_gate_importance, head_projections

from .models import FACTORIES

pytestmark = pytest.mark.usefixtures("one_thread_module")


W = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, -3.0, 2.0, 1.0]])  # o-proj weight [out=2, in=4]
HEAD_OF = torch.tensor([0, 0, 1, 1])  # two heads of two columns each


def test_gate_scores_by_hand_sum_the_head_before_abs() -> None:
    g = torch.tensor([[1.0, 1.0, 1.0, 2.0], [1.0, 1.0, 0.0, -1.0]])
    # W*g = [[1, 2, -1, 1], [0, -3, 0, -1]]; head 0 columns: 1+2+0-3 = 0 ; head 1: -1+1+0-1 = -1
    torch.testing.assert_close(head_gate_contributions(W, g, 1, HEAD_OF, 2), torch.tensor([[0.0, -1.0]]))
    torch.testing.assert_close(head_gate_scores(W, g, 1, HEAD_OF, 2), torch.tensor([0.0, 1.0]))
    # HF Conv1D keeps the weight as [in, out]: the input dim is 0, same numbers
    torch.testing.assert_close(head_gate_scores(W.T, g.T, 0, HEAD_OF, 2), torch.tensor([0.0, 1.0]))
    # a column in no head (-1) contributes nothing
    torch.testing.assert_close(head_gate_scores(W, g, 1, torch.tensor([0, 0, -1, 1]), 2), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="head_of"):
        head_gate_scores(W, g, 1, torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="grad of shape"):
        head_gate_scores(W, g.T, 1, HEAD_OF, 2)


def test_per_batch_abs_differs_from_abs_of_summed_gradient() -> None:
    g = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    stacked = torch.stack([g, -g])  # two batches pulling the gates in opposite directions
    # W*g keeps W[0, 0] = 1 (head 0) and W[1, 2] = 2 (head 1): |1| and |2| in both batches
    torch.testing.assert_close(head_gate_scores(W, stacked, 1, HEAD_OF, 2), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(head_gate_scores(W, g + (-g), 1, HEAD_OF, 2), torch.zeros(2))


# -- on tiny transformers --------------------------------------------------------------------------
def _text_ctx(model: nn.Module, x: dict[str, torch.Tensor], n_batches: int = 2) -> slimkit.Context:
    gen = torch.Generator().manual_seed(1)
    batches = [({"input_ids": torch.randint(0, 50, (2, 6), generator=gen)}, torch.randn(2, 32, generator=gen))
               for _ in range(n_batches)]

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        inputs, target = batch
        return (call_model(m, inputs).last_hidden_state[:, 0] - target).pow(2).mean()

    return slimkit.Context(example_inputs=x, train_data=batches, loss_fn=loss_fn)


def _autograd_gate_importance(model: nn.Module, group: Group, ctx: slimkit.Context) -> torch.Tensor:
    """Michel's definition done literally: a gate xi multiplies each head's context output entering
    every output projection; importance = mean over batches of |dL/dxi|."""
    xi = torch.ones(group.n_units, requires_grad=True)
    handles = []
    for param, dim in head_projections(model, group):
        assert dim == 1  # nn.Linear projections in these models
        head_of = torch.as_tensor(group.members[(param, dim)])
        scale_index = head_of.clamp(min=0)

        def pre(_m: nn.Module, args: tuple[Any, ...], head_of=head_of, scale_index=scale_index) -> tuple[Any, ...]:
            scale = torch.where(head_of >= 0, xi[scale_index], torch.ones(()))  # [in]
            return (args[0] * scale,) + args[1:]

        handles.append(model.get_submodule(param.rpartition(".")[0]).register_forward_pre_hook(pre))
    per_batch = []
    model.eval()
    try:
        for batch in ctx.train_data:  # type: ignore[union-attr]
            (g,) = torch.autograd.grad(ctx.loss_fn(model, batch), xi)  # type: ignore[misc]
            per_batch.append(g.abs())
    finally:
        for h in handles:
            h.remove()
    return torch.stack(per_batch).mean(dim=0)


@pytest.mark.parametrize("arch", ["bert", "t5_encoder"])  # t5: heads tied across blocks -> two projections
def test_weight_gradient_form_equals_the_gate_gradient(arch: str) -> None:
    model, x = FACTORIES[arch]()
    ctx = _text_ctx(model, x)
    groups = [g for g in analyze(model, x).groups if g.heads]
    got = head_gate_importance(model, groups, ctx, batches=8, method="test")
    for g in groups:
        expected = _autograd_gate_importance(model, g, ctx)
        assert expected.abs().max() > 0
        torch.testing.assert_close(got[g.name], expected, rtol=1e-4, atol=1e-7)
    if arch == "t5_encoder":
        assert len(head_projections(model, groups[0])) == 2


def test_a_head_whose_projection_columns_vanish_scores_zero_and_is_pruned() -> None:
    model, x = FACTORIES["bert"]()  # 4 heads of 8 dims per layer
    with torch.no_grad():
        model.encoder.layer[0].attention.output.dense.weight[:, 16:24] *= 1e-6  # head 2 of layer 0
    ctx = _text_ctx(model, x, n_batches=3)
    groups = [g for g in analyze(model, x).groups if g.heads]
    scores = head_gate_importance(model, groups, ctx, batches=8, method="test")
    layer0 = scores["encoder.layer.0.attention.self.query"]
    others = layer0[[0, 1, 3]]
    assert float(layer0[2]) < 1e-4 * float(others.min())
    pruned = slimkit.apply(model, HeadPrune(importance="head", heads_per_group=1), ctx=ctx)
    groups_rec = slimkit.records(pruned)[-1].data["groups"]
    assert groups_rec["encoder.layer.0.attention.self.query"]["kept"] == [0, 1, 3]


def test_without_a_loss_it_uses_the_output_proxy_on_calib_data() -> None:
    model, x = FACTORIES["gpt2"]()  # HF Conv1D c_proj: the heads are read along dim 0
    group = next(g for g in analyze(model, x).groups if g.heads)
    assert head_projections(model, group) == [("h.0.attn.c_proj.weight", 0)]
    gen = torch.Generator().manual_seed(2)
    calib = [{"input_ids": torch.randint(0, 50, (2, 6), generator=gen)} for _ in range(3)]
    seen: list[int] = []

    def spy(_m: nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.extend(i for i, b in enumerate(calib) if kwargs.get("input_ids") is b["input_ids"])

    model.register_forward_pre_hook(spy, with_kwargs=True)
    ctx = slimkit.Context(example_inputs=x, calib_data=calib)
    pruned = slimkit.apply(model, HeadPrune(importance="head", ratio=0.5, calib_batches=2), ctx=ctx)
    assert seen == [0, 1]  # one gradient pass per calibration batch, at most calib_batches
    assert pruned.h[0].attn.c_proj.weight.shape[0] == 16  # 2 of 4 heads x 8 dims left
