"""prune.merge: data-free merging of redundant hidden neurons (Srinivas & Babu 2015)."""
from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

import slimkit
from slimkit.core.errors import ConfigError, MethodError
from slimkit.prune.merge import MergePrune, find_pairs, merge_plan


def _mlp_out(w_in, b_in, w_out, x):
    return torch.relu(x @ w_in.T + b_in) @ w_out.T  # [B, d_out]


def test_exact_duplicate_is_merged_and_output_unchanged():
    torch.manual_seed(0)
    w_in, b_in, w_out = torch.randn(6, 4), torch.randn(6), torch.randn(3, 6)
    w_in[4], b_in[4] = w_in[1], b_in[1]  # neuron 4 duplicates neuron 1
    kept, w_new = merge_plan(w_in, b_in, w_out, 1)
    assert len(kept) == 5 and (1 in kept.tolist()) != (4 in kept.tolist())
    twin = 1 if 1 in kept.tolist() else 4
    col = kept.tolist().index(twin)
    assert torch.allclose(w_new[:, col], w_out[:, 1] + w_out[:, 4])  # outgoing weights added to the twin
    x = torch.randn(20, 4)
    assert torch.allclose(_mlp_out(w_in[kept], b_in[kept], w_new, x), _mlp_out(w_in, b_in, w_out, x), atol=1e-5)


def test_saliency_by_hand_weighs_distance_by_outgoing_weight():
    # neurons 0 and 1 are close (distance^2 = 1) but 1 has a huge outgoing weight;
    # neurons 2 and 3 are farther apart (distance^2 = 4) with small outgoing weights.
    w_in = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    w_out = torch.tensor([[10.0, 10.0, 0.1, 0.1]])  # [d_out=1, n=4]
    # s_ij = a_j^2 * d_ij^2: removing 0 or 1 costs 100, removing 2 or 3 costs 0.04 -> drop 2 (first tie) into 3
    kept, w_new = merge_plan(w_in, None, w_out, 1)
    assert kept.tolist() == [0, 1, 3]
    assert torch.allclose(w_new, torch.tensor([[10.0, 10.0, 0.2]]))
    # second step: 3 (now a = 0.2, <a^2> = 0.04) is nearest to 1 at d^2 = 81 + 144 = 225 -> s = 9 < 100
    kept2, w_new2 = merge_plan(w_in, None, w_out, 2)
    assert kept2.tolist() == [0, 1]
    assert torch.allclose(w_new2, torch.tensor([[10.0, 10.2]]))


def test_merge_beats_random_removal_on_near_duplicates():
    torch.manual_seed(0)
    n, n_dup, d = 32, 8, 16
    w_in, b_in, w_out = torch.randn(n, d), torch.randn(n), torch.randn(4, n)
    for k in range(n_dup):  # the last 8 neurons are noisy copies of the first 8
        w_in[n - 1 - k] = w_in[k] + 0.01 * torch.randn(d)
        b_in[n - 1 - k] = b_in[k]
    x = torch.randn(256, d)
    ref = _mlp_out(w_in, b_in, w_out, x)
    kept, w_new = merge_plan(w_in, b_in, w_out, n_dup)
    merge_err = (_mlp_out(w_in[kept], b_in[kept], w_new, x) - ref).pow(2).mean()
    gen = torch.Generator().manual_seed(1)
    rand_errs = []
    for _ in range(5):
        keep = torch.sort(torch.randperm(n, generator=gen)[: n - n_dup]).values
        rand_errs.append((_mlp_out(w_in[keep], b_in[keep], w_out[:, keep], x) - ref).pow(2).mean())
    assert merge_err < 0.01 * min(rand_errs)
    # it found the planted pairs: exactly one of each (k, n-1-k) survives
    survivors = set(kept.tolist())
    assert all((k in survivors) != (n - 1 - k in survivors) for k in range(n_dup))


def test_merge_plan_argument_checks():
    with pytest.raises(ValueError, match="n_remove"):
        merge_plan(torch.randn(3, 2), None, torch.randn(1, 3), 3)
    with pytest.raises(ValueError, match="chain"):
        merge_plan(torch.randn(3, 2), None, torch.randn(1, 4), 1)
    kept, w = merge_plan(torch.randn(3, 2), None, torch.randn(1, 3), 0)
    assert kept.tolist() == [0, 1, 2] and w.shape == (1, 3)


def _seq() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 2))
    with torch.no_grad():  # two duplicated neurons in each hidden layer
        for lin in (m[0], m[3]):
            lin.weight[5], lin.bias[5] = lin.weight[2], lin.bias[2]
            lin.weight[7], lin.bias[7] = lin.weight[0], lin.bias[0]
    return m.eval()


def test_sequential_method_shrinks_both_linears_keeps_function_and_restores(tmp_path):
    dense = _seq()
    assert find_pairs(dense) == [("0", "3"), ("3", "5")]
    small = slimkit.apply(dense, MergePrune(ratio=0.25))
    assert (small[0].out_features, small[3].in_features, small[3].out_features, small[5].in_features) == (6, 6, 6, 6)
    assert small[0].weight.shape == (6, 4) and small[5].weight.shape == (2, 6)
    x = torch.randn(10, 4)
    assert torch.allclose(small(x), dense(x), atol=1e-5)
    rec = slimkit.records(small)[-1]
    assert rec.summary["neurons_after"] == 12 and rec.summary["params_after"] < rec.summary["params_before"]
    slimkit.save(small, tmp_path)
    again = slimkit.restore(tmp_path, model=_seq)
    assert torch.equal(again(x), small(x))


def _dup_hidden(first_w: torch.Tensor, first_b: torch.Tensor, rows: bool) -> None:
    """Make hidden neuron 3 a copy of neuron 0 (rows of a Linear weight, columns of a Conv1D)."""
    with torch.no_grad():
        if rows:
            first_w[3] = first_w[0]
        else:
            first_w[:, 3] = first_w[:, 0]
        first_b[3] = first_b[0]


def test_bert_ffn_pairs_merge_exact_duplicates(tmp_path):
    def build():
        torch.manual_seed(0)
        c = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)
        m = T.BertModel(c).eval()
        for layer in m.encoder.layer:
            _dup_hidden(layer.intermediate.dense.weight, layer.intermediate.dense.bias, rows=True)
        return m
    dense = build()
    assert find_pairs(dense) == [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense")
                                 for i in range(2)]
    small = slimkit.apply(dense, MergePrune(ratio=1 / 32))  # remove exactly one neuron per FFN
    ids = torch.tensor([[1, 4, 9, 2]])
    for layer in small.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (31, 16) and layer.output.dense.weight.shape == (16, 31)
    with torch.no_grad():
        assert torch.allclose(small(input_ids=ids).last_hidden_state, dense(input_ids=ids).last_hidden_state, atol=1e-5)
    slimkit.save(small, tmp_path)
    again = slimkit.restore(tmp_path, model=build)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).last_hidden_state, small(input_ids=ids).last_hidden_state)


def test_gpt2_conv1d_pairs_merge_exact_duplicates(tmp_path):
    def build():
        torch.manual_seed(0)
        c = T.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32, n_inner=32,
                         bos_token_id=0, eos_token_id=0)
        m = T.GPT2LMHeadModel(c).eval()
        for block in m.transformer.h:
            _dup_hidden(block.mlp.c_fc.weight, block.mlp.c_fc.bias, rows=False)  # Conv1D weight is [in, out]
        return m
    dense = build()
    pairs = find_pairs(dense)
    assert pairs == [(f"transformer.h.{i}.mlp.c_fc", f"transformer.h.{i}.mlp.c_proj") for i in range(2)]
    small = slimkit.apply(dense, MergePrune(ratio=1 / 32))
    mlp = small.transformer.h[0].mlp
    assert (mlp.c_fc.nf, mlp.c_proj.nx, mlp.c_fc.weight.shape, mlp.c_proj.weight.shape) == (31, 31, (16, 31), (31, 16))
    ids = torch.tensor([[1, 4, 9, 2]])
    with torch.no_grad():
        assert torch.allclose(small(input_ids=ids).logits, dense(input_ids=ids).logits, atol=1e-5)
    slimkit.save(small, tmp_path)
    with torch.no_grad():
        assert torch.equal(slimkit.restore(tmp_path, model=build)(input_ids=ids).logits, small(input_ids=ids).logits)


def test_targets_and_errors():
    small = slimkit.apply(_seq(), MergePrune(ratio=0.5), slimkit.Targets(include=("3",)))
    assert small[0].out_features == 8 and small[3].out_features == 4 and small[5].in_features == 4
    with pytest.raises(MethodError, match="no Linear -> activation -> Linear"):
        slimkit.apply(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2)), MergePrune())
    with pytest.raises(ConfigError, match="ratio"):
        MergePrune(ratio=1.0)
