"""Dependency analysis and the prune.channel / prune.heads methods on small models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, MethodError, Record
from slimkit.core.context import call_model
from slimkit.prune import ChannelPrune, HeadPrune
from slimkit.prune.graph import DependencyGraph, Group, analyze
from slimkit.prune.structured import replay_plan

from .models import FACTORIES, DigitsLikeCNN, ResidualConcatNet


def group_with(graph: DependencyGraph, axis: tuple[str, int]) -> Group | None:
    return next((g for g in graph.groups if axis in g.members), None)


@pytest.fixture(scope="module")
def concat_graph() -> DependencyGraph:
    model, x = FACTORIES["residual_concat_cnn"]()
    return analyze(model, x)


def test_residual_add_couples_producers_and_consumers(concat_graph: DependencyGraph) -> None:
    g = group_with(concat_graph, ("stem.0.weight", 0))
    assert g is not None and g.n_units == 8
    stem = g.members[("stem.0.weight", 0)]
    # the residual add ties pw's output channel i to stem's channel i, and every reader follows
    for axis in [("pw.weight", 0), ("pw.bias", 0), ("stem.1.weight", 0), ("stem.1.running_var", 0),
                 ("branch_a.0.weight", 1), ("branch_b.0.weight", 1), ("head_conv.weight", 1)]:
        np.testing.assert_array_equal(g.members[axis], stem, err_msg=str(axis))
    assert not g.heads


def test_concat_offsets_and_depthwise_pass_through(concat_graph: DependencyGraph) -> None:
    g = group_with(concat_graph, ("pw.weight", 1))
    assert g is not None and g.n_units == 16
    pw_in = g.members[("pw.weight", 1)]
    np.testing.assert_array_equal(pw_in[:6], g.members[("branch_a.0.weight", 0)])
    np.testing.assert_array_equal(pw_in[6:], g.members[("branch_b.0.weight", 0)])
    for axis in [("dw.weight", 0), ("dw.bias", 0), ("dw_bn.weight", 0)]:  # depthwise: in channel c == out channel c
        np.testing.assert_array_equal(g.members[axis], pw_in)


def test_flatten_into_linear_gives_blocks_of_spatial_size(concat_graph: DependencyGraph) -> None:
    g = group_with(concat_graph, ("head_conv.weight", 0))
    assert g is not None and g.n_units == 12
    fc1_in = g.members[("fc1.weight", 1)]
    assert fc1_in.shape == (12 * 16,)
    np.testing.assert_array_equal(fc1_in, np.repeat(g.members[("head_conv.weight", 0)], 16))
    assert (g.unit_size(("fc1.weight", 1)) == 16).all()


def test_model_inputs_and_outputs_are_never_pruned(concat_graph: DependencyGraph) -> None:
    assert group_with(concat_graph, ("fc2.weight", 0)) is None      # logits
    assert group_with(concat_graph, ("stem.0.weight", 1)) is None   # RGB input
    assert concat_graph.frozen_reasons["reaches the model output"] == 5


def test_bert_heads_and_ffn_groups() -> None:
    model, x = FACTORIES["bert"]()
    graph = analyze(model, x)
    heads = [g for g in graph.groups if g.heads]
    ffn = [g for g in graph.groups if not g.heads]
    assert len(heads) == 2 and len(ffn) == 2
    h = heads[0]
    assert h.n_units == 4
    for axis in [("encoder.layer.0.attention.self.query.weight", 0), ("encoder.layer.0.attention.self.key.bias", 0),
                 ("encoder.layer.0.attention.self.value.weight", 0),
                 ("encoder.layer.0.attention.output.dense.weight", 1)]:
        np.testing.assert_array_equal(h.members[axis], np.repeat(np.arange(4), 8), err_msg=str(axis))
    assert ffn[0].n_units == 48 and set(ffn[0].modules) == {"encoder.layer.0.intermediate.dense",
                                                             "encoder.layer.0.output.dense"}
    # the hidden width goes through LayerNorm and reaches the output: frozen
    assert group_with(graph, ("embeddings.word_embeddings.weight", 1)) is None
    assert graph.frozen_reasons.get("layer norm statistics", 0) > 0


def test_gqa_couples_each_kv_head_with_its_query_heads() -> None:
    model, x = FACTORIES["llama_gqa"]()  # 4 query heads, 2 KV heads, head_dim 8
    graph = analyze(model, x)
    h = next(g for g in graph.groups if g.heads and "layers.0.self_attn.q_proj" in g.modules)
    assert h.n_units == 2
    np.testing.assert_array_equal(h.members[("layers.0.self_attn.q_proj.weight", 0)], np.arange(32) // 16)
    np.testing.assert_array_equal(h.members[("layers.0.self_attn.k_proj.weight", 0)], np.arange(16) // 8)
    np.testing.assert_array_equal(h.members[("layers.0.self_attn.o_proj.weight", 1)], np.arange(32) // 16)
    pruned = slimkit.apply(model, HeadPrune(heads_per_group=1), ctx=slimkit.Context(example_inputs=x))
    attn = pruned.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (16, 8, 2)


class GroupedAndCumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped, not depthwise
        self.b = nn.Conv2d(8, 6, 1)
        self.c = nn.Conv2d(6, 6, 1)
        self.d = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.b(self.g(self.a(x)))
        return self.d(torch.cumsum(self.c(y), dim=1))  # cumsum mixes channels: not understood -> frozen


def test_grouped_conv_and_unknown_channel_mixing_are_frozen() -> None:
    model, x = GroupedAndCumsum().eval(), torch.randn(1, 3, 5, 5)
    graph = analyze(model, x)
    for axis in [("a.weight", 0), ("g.weight", 0), ("c.weight", 0)]:
        assert group_with(graph, axis) is None, axis
    g = group_with(graph, ("b.weight", 0))
    assert g is not None and ("c.weight", 1) in g.members  # the plain conv -> conv pair stays prunable
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.5), ctx=slimkit.Context(example_inputs=x))
    assert pruned.b.out_channels == 3 and pruned.c.in_channels == 3 and pruned.g.out_channels == 8
    assert call_model(pruned, x).shape == (1, 4, 5, 5)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="ratio"):
        ChannelPrune(ratio=1.0)
    with pytest.raises(ConfigError, match="round_to"):
        ChannelPrune(round_to=0)
    with pytest.raises(ConfigError, match="heads_per_group"):
        HeadPrune(heads_per_group=-1)
    assert ChannelPrune.from_dict({"ratio": 0.5, "importance": "fpgm"}).importance == "fpgm"
    assert "prune.channel" in slimkit.kinds() and "prune.heads" in slimkit.kinds()


def test_needs_example_inputs_and_head_groups() -> None:
    with pytest.raises(MethodError, match="example_inputs"):
        slimkit.apply(DigitsLikeCNN(), ChannelPrune(ratio=0.5))
    model, x = FACTORIES["digits_cnn"]()
    with pytest.raises(MethodError, match="attention-head"):
        slimkit.apply(model, HeadPrune(), ctx=slimkit.Context(example_inputs=x))


def test_targets_select_groups_and_round_to() -> None:
    model, x = FACTORIES["digits_cnn"]()
    ctx = slimkit.Context(example_inputs=x)
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.3, round_to=8), slimkit.Targets(include=("classifier.*",)),
                           ctx=ctx)
    assert list(slimkit.records(pruned)[-1].data["groups"]) == ["classifier.1"]
    assert pruned.classifier[1].out_features == 24 and pruned.classifier[3].in_features == 24  # 32*0.7=22.4 -> 24
    assert [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)] == [8, 16, 16]


def test_bn_scale_keeps_the_largest_gammas() -> None:
    model, x = FACTORIES["digits_cnn"]()
    gamma = torch.tensor([0.1, 5.0, 0.2, 4.0, 3.0, 0.05, 2.0, 0.3])
    with torch.no_grad():
        model.features[1].weight.copy_(gamma)
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.5, importance="bn_scale"),
                           slimkit.Targets(include=("features.0",)), ctx=slimkit.Context(example_inputs=x))
    assert slimkit.records(pruned)[-1].data["groups"]["features.0"]["kept"] == [1, 3, 4, 6]
    torch.testing.assert_close(pruned.features[1].weight.detach(), gamma[[1, 3, 4, 6]])


@pytest.mark.parametrize("criterion", ["l2", "fpgm", "random", "taylor"])
def test_criteria_prune_the_same_amount(criterion: str) -> None:
    model, x = FACTORIES["residual_concat_cnn"]()
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        return call_model(m, batch).logsumexp(-1).mean()

    ctx = slimkit.Context(example_inputs=x, train_data=[x, x], loss_fn=loss_fn)
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.5, importance=criterion), ctx=ctx)
    assert pruned.fc1.out_features == 10 and pruned.head_conv.out_channels == 6 and pruned.pw.out_channels == 4
    assert call_model(pruned, x).shape == (2, 5)
    assert len(calls) == (2 if criterion == "taylor" else 0)


def test_taylor_prefers_units_the_loss_depends_on() -> None:
    model, x = FACTORIES["digits_cnn"]()
    with torch.no_grad():  # neurons 0..15 of classifier.1 feed nothing: zero gradient -> pruned first
        model.classifier[3].weight[:, :16] = 0
        model.classifier[1].bias[16:] = 1.0  # and 16..31 are active (a dead ReLU would also score 0)
    ctx = slimkit.Context(example_inputs=x, calib_data=[x])
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.5, importance="taylor"),
                           slimkit.Targets(include=("classifier.1",)), ctx=ctx)
    assert slimkit.records(pruned)[-1].data["groups"]["classifier.1"]["kept"] == list(range(16, 32))


def test_grad_source_output_ignores_the_task_loss() -> None:
    """``grad_source: output`` ranks by the output proxy on calib data even when a loss is set."""
    model, x = FACTORIES["digits_cnn"]()
    with torch.no_grad():
        model.classifier[3].weight[:, :16] = 0  # neurons 0..15 feed nothing
        model.classifier[1].bias[16:] = 1.0
    seen: list[str] = []

    def loss_fn(m, batch):  # a task loss; its calls are counted
        seen.append("loss")
        return -call_model(m, batch[0]).pow(2).sum()

    ctx = slimkit.Context(example_inputs=x, calib_data=[x], train_data=[(x, None)], loss_fn=loss_fn)
    targets = slimkit.Targets(include=("classifier.1",))
    by_loss = slimkit.apply(model, ChannelPrune(ratio=0.5, importance="taylor", calib_batches=1), targets, ctx=ctx)
    assert seen == ["loss"]
    by_output = slimkit.apply(model, ChannelPrune(ratio=0.5, importance="taylor", grad_source="output",
                                                  calib_batches=1), targets, ctx=ctx)
    assert seen == ["loss"]  # the proxy ran, not the loss
    assert slimkit.records(by_output)[-1].data["groups"]["classifier.1"]["kept"] == list(range(16, 32))
    assert slimkit.records(by_loss)[-1].data["groups"]["classifier.1"]["kept"] == list(range(16, 32))
    with pytest.raises(ConfigError, match="grad_source"):
        ChannelPrune.from_dict({"grad_source": "labels"})


def test_global_scope_and_per_group_ratio() -> None:
    model, x = FACTORIES["residual_concat_cnn"]()
    ctx = slimkit.Context(example_inputs=x)
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.5, per_group_ratio={"fc1": 0.0}), ctx=ctx)
    assert pruned.fc1.out_features == 20 and pruned.head_conv.out_channels == 6
    g = slimkit.apply(model, ChannelPrune(ratio=0.5, scope="global"), ctx=ctx)
    kept = sum(len(v["kept"]) for v in slimkit.records(g)[-1].data["groups"].values())
    assert kept == pytest.approx((8 + 16 + 12 + 20) * 0.5, abs=1)


def test_replay_rejects_a_record_for_another_model() -> None:
    model, x = FACTORIES["digits_cnn"]()
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.5), ctx=slimkit.Context(example_inputs=x))
    rec = slimkit.records(pruned)[-1]
    other = ResidualConcatNet()
    with pytest.raises(MethodError, match="does not have"):
        replay_plan(other, rec)
    fresh = DigitsLikeCNN()
    replay_plan(fresh, Record.from_dict(rec.to_dict()))
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in pruned.parameters()]


def test_zoo_digits_cnn_prunes_and_restores_from_its_spec(tmp_path) -> None:
    from slimkit.zoo import build

    model = build("zoo:digits-cnn").eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pruned = slimkit.apply(model, ChannelPrune(ratio=0.5), ctx=slimkit.Context(example_inputs=x))
    convs = [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)]
    assert convs == [8, 16, 32] and pruned.classifier[0].in_features == 32 * 2 * 2
    assert pruned.classifier[0].out_features == 32 and pruned(x).shape == (4, 10)
    slimkit.save(pruned, tmp_path / "d")
    again = slimkit.restore(tmp_path / "d")  # rebuilt from the manifest's model_spec, then replayed
    torch.testing.assert_close(again(x), pruned(x), rtol=0, atol=0)
