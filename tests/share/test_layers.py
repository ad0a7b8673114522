"""share.layers: grouping, init modes, ties surviving save/restore, file size, profile, training, errors."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as T
from safetensors import safe_open
from torch import nn

import slimkit
from slimkit import measure
from slimkit.core import ArtifactError, ConfigError, MethodError, Recipe, Targets
from slimkit.quantize.ptq import CastQuant
from slimkit.share.layers import LayersShare, group_blocks
from slimkit.train import TrainOptions, outputs_loss, train

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 8, 1, 0, 6]])  # [B=2, T=6]
Q = "attention.self.query.weight"


def _bert(layers: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    c = T.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return T.BertModel(c).eval()


def _param(model: nn.Module, block: int, name: str = Q) -> torch.Tensor:
    return model.get_parameter(f"encoder.layer.{block}.{name}")


def _out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).last_hidden_state


def _stored_bytes(folder: Path) -> int:
    """Bytes of the tensors in ``folder/model.safetensors`` (the file also holds a JSON header)."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


def _block_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.encoder.layer[0].parameters())


# ------------------------------------------------------------------ grouping


def test_groups_split_consecutive_blocks_larger_runs_first() -> None:
    assert group_blocks(6, LayersShare(groups=3)) == [[0, 1], [2, 3], [4, 5]]
    assert group_blocks(6, LayersShare(groups=2)) == [[0, 1, 2], [3, 4, 5]]
    assert group_blocks(6, LayersShare(groups=4)) == [[0, 1], [2, 3], [4], [5]]
    assert group_blocks(6, LayersShare(groups=1)) == [list(range(6))]
    assert group_blocks(6, LayersShare(group_map=[[5, 3], [0, 1]])) == [[3, 5], [0, 1]]


def test_blocks_of_a_group_hold_one_parameter_object_and_other_groups_do_not() -> None:
    model = _bert()
    shared = slimkit.apply(model, LayersShare(groups=3))
    for a, b in ((0, 1), (2, 3), (4, 5)):
        for name, p in shared.encoder.layer[a].named_parameters():
            assert shared.encoder.layer[b].get_parameter(name) is p
    assert _param(shared, 1) is not _param(shared, 2)
    assert _param(model, 0) is not _param(model, 1)  # the caller's model is not tied
    rec = slimkit.records(shared)[-1]
    assert rec.data["lists"]["encoder.layer"]["groups"] == [[0, 1], [2, 3], [4, 5]]
    assert rec.summary["blocks_stored"] == 3
    assert rec.summary["params_before"] - rec.summary["params_after"] == 3 * _block_params(model)


def test_group_map_leaves_unlisted_blocks_alone() -> None:
    model = _bert()
    shared = slimkit.apply(model, LayersShare(group_map=[[1, 3, 5]], init="first"))
    assert _param(shared, 1) is _param(shared, 3) is _param(shared, 5)
    for i in (0, 2, 4):
        assert torch.equal(_param(shared, i), _param(model, i))
    assert len({id(_param(shared, i)) for i in range(6)}) == 4


# ------------------------------------------------------------------ init modes


@pytest.mark.parametrize("init,index,source", [("first", 0, 0), ("last", 0, 2), ("index", 1, 1), ("index", -1, 2)])
def test_init_from_one_block_of_each_group(init: str, index: int, source: int) -> None:
    model = _bert()
    shared = slimkit.apply(model, LayersShare(groups=2, init=init, index=index))
    for start in (0, 3):
        for name, p in model.encoder.layer[start + source].named_parameters():
            assert torch.equal(_param(shared, start, name), p), name


def test_init_mean_averages_the_group() -> None:
    model = _bert()
    shared = slimkit.apply(model, LayersShare(groups=3))
    for name, _ in model.encoder.layer[0].named_parameters():
        want = (_param(model, 2, name) + _param(model, 3, name)) / 2
        torch.testing.assert_close(_param(shared, 2, name), want, rtol=0, atol=1e-7)


# ------------------------------------------------------------------ save / restore


def _saved(tmp_path: Path, config: LayersShare) -> tuple[nn.Module, nn.Module]:
    shared = slimkit.apply(_bert(), config)
    slimkit.save(shared, tmp_path)
    return shared, slimkit.restore(tmp_path, model=lambda: _bert(seed=1))


def test_restore_reties_the_blocks_and_reproduces_outputs(tmp_path: Path) -> None:
    shared, restored = _saved(tmp_path, LayersShare(groups=3))
    assert torch.equal(_out(restored), _out(shared))
    assert _param(restored, 0) is _param(restored, 1) and _param(restored, 1) is not _param(restored, 2)
    before = [_out(restored)]
    with torch.no_grad():
        _param(restored, 0).mul_(2.0)  # one shared weight, changed through block 0 ...
    for b in (0, 1):  # ... is every block's of the group
        assert torch.equal(_param(restored, b), _param(shared, 0) * 2.0)
    assert torch.equal(_param(restored, 2), _param(shared, 2))
    assert not torch.equal(_out(restored), before[0])


def test_the_file_stores_each_shared_tensor_once(tmp_path: Path) -> None:
    dense_dir, shared_dir = tmp_path / "dense", tmp_path / "shared"
    model = _bert()
    slimkit.save(model, dense_dir)
    shared = slimkit.apply(model, LayersShare(groups=2))
    slimkit.save(shared, shared_dir)
    with safe_open(str(shared_dir / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        layout = json.loads(f.metadata()["slimkit.layout"])
    for b in (1, 2, 4, 5):
        assert f"encoder.layer.{b}.{Q}" not in keys
        assert layout[f"encoder.layer.{b}.{Q}"] == {"alias": f"encoder.layer.{3 * (b // 3)}.{Q}"}
    assert f"encoder.layer.0.{Q}" in keys and f"encoder.layer.3.{Q}" in keys
    # four of six blocks are no longer stored: the tensors shrink by exactly their bytes, the file by more
    # (their header entries go too)
    block_bytes = 4 * _block_params(model) * 4
    assert _stored_bytes(dense_dir) - _stored_bytes(shared_dir) == block_bytes
    file_bytes = [(d / "model.safetensors").stat().st_size for d in (dense_dir, shared_dir)]
    assert file_bytes[0] - file_bytes[1] >= block_bytes


def test_profile_counts_shared_parameters_once(tmp_path: Path) -> None:
    model = _bert()
    shared = slimkit.apply(model, LayersShare(groups=3))
    dense_prof = measure.profile(model, {"input_ids": IDS})
    prof = measure.profile(shared, {"input_ids": IDS})
    assert prof.params_total == dense_prof.params_total - 3 * _block_params(model)
    assert prof.macs == dense_prof.macs  # every block still runs: sharing saves size, not compute
    slimkit.save(shared, tmp_path)
    assert prof.bytes_on_disk == _stored_bytes(tmp_path)


def test_fp16_cast_after_sharing_keeps_the_ties(tmp_path: Path) -> None:
    shared = slimkit.apply(_bert(), LayersShare(groups=3))
    half = slimkit.apply(shared, CastQuant(dtype="float16"), Targets())
    assert _param(half, 0) is _param(half, 1) and _param(half, 0).dtype == torch.float16
    slimkit.save(half, tmp_path / "half")
    slimkit.save(shared, tmp_path / "float")
    restored = slimkit.restore(tmp_path / "half", model=lambda: _bert(seed=1))
    assert _param(restored, 0) is _param(restored, 1)
    assert torch.equal(_out(restored), _out(half))
    assert _stored_bytes(tmp_path / "float") == 2 * _stored_bytes(tmp_path / "half")


# ------------------------------------------------------------------ other architectures


def test_gpt2_kv_cache_still_indexes_each_block() -> None:
    """Blocks keep their own module (and ``layer_idx``): cached decoding matches a full forward."""
    torch.manual_seed(0)
    c = T.GPT2Config(vocab_size=50, n_embd=16, n_layer=4, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    shared = slimkit.apply(T.GPT2LMHeadModel(c).eval(), LayersShare(groups=1))
    assert [b.attn.layer_idx for b in shared.transformer.h] == [0, 1, 2, 3]
    with torch.no_grad():
        full = shared(input_ids=IDS).logits
        first = shared(input_ids=IDS[:, :-1], use_cache=True)
        last = shared(input_ids=IDS[:, -1:], cache=first.past_key_values, use_cache=True).logits
    torch.testing.assert_close(last[:, -1], full[:, -1], rtol=1e-4, atol=1e-5)


def test_t5_relative_bias_of_block_0_stays_its_own(tmp_path: Path) -> None:
    def t5(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        c = T.T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=4, num_heads=2)
        return T.T5EncoderModel(c).eval()

    shared = slimkit.apply(t5(), LayersShare(groups=2))
    rec = slimkit.records(shared)[-1]
    assert rec.data["lists"]["encoder.block"]["untied"] == {"0": ["layer.0.SelfAttention.relative_attention_bias.weight"]}
    blocks = shared.encoder.block
    assert blocks[0].layer[0].SelfAttention.q.weight is blocks[1].layer[0].SelfAttention.q.weight
    slimkit.save(shared, tmp_path)
    restored = slimkit.restore(tmp_path, model=lambda: t5(1))
    with torch.no_grad():
        assert torch.equal(restored(input_ids=IDS).last_hidden_state, shared(input_ids=IDS).last_hidden_state)


# ------------------------------------------------------------------ training


def test_training_updates_a_shared_parameter_once_with_the_summed_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    shared = slimkit.apply(_bert(4), LayersShare(groups=2))
    untied = copy.deepcopy(shared)
    for b in (1, 3):  # the same values, separate parameters
        for name, p in list(untied.encoder.layer[b].named_parameters()):
            owner, attr = name.rpartition(".")[0], name.rpartition(".")[2]
            setattr(untied.encoder.layer[b].get_submodule(owner), attr, nn.Parameter(p.detach().clone()))
    batch = ({"input_ids": IDS}, torch.randn(2, 16, generator=torch.Generator().manual_seed(0)))

    def loss(out: Any, _t: Any, b: Any) -> torch.Tensor:
        return nn.functional.mse_loss(out.last_hidden_state[:, 0], b[1])

    loss(untied(**batch[0]), None, batch).backward()
    want = _param(untied, 0) - 0.1 * (_param(untied, 0).grad + _param(untied, 1).grad)

    import slimkit.train.engine as engine

    seen: list[list[torch.Tensor]] = []
    real = engine.make_optimizer
    monkeypatch.setattr(engine, "make_optimizer", lambda params, *a: seen.append(params) or real(params, *a))
    train(shared, outputs_loss(loss), [batch], TrainOptions(steps=1, lr=0.1, optimizer="sgd", schedule="constant"))
    (params,) = seen
    assert len({id(p) for p in params}) == len(params) == len(list(shared.parameters()))
    torch.testing.assert_close(_param(shared, 0).detach(), want.detach(), rtol=1e-5, atol=1e-7)
    assert _param(shared, 0) is _param(shared, 1)


# ------------------------------------------------------------------ recipes and errors


def test_yaml_recipe_runs_and_round_trips() -> None:
    text = ("name: share\nsteps:\n  - kind: share.layers\n"
            "    with: {group_map: [[0, 1, 2], [3, 4, 5]], init: index, index: 2}\n")
    recipe = Recipe.from_yaml(text)
    assert recipe.steps[0].config == LayersShare(group_map=((0, 1, 2), (3, 4, 5)), init="index", index=2)
    out = recipe.run(_bert(), slimkit.Context())
    assert _param(out, 3) is _param(out, 5)
    assert Recipe.from_dict(recipe.to_dict()).steps[0].config == recipe.steps[0].config


@pytest.mark.parametrize("options,key", [
    ({}, "groups"), ({"groups": 2, "group_map": [[0, 1]]}, "groups"), ({"groups": 0}, "groups"),
    ({"group_map": [[0, 1], [1, 2]]}, "group_map"), ({"group_map": [[]]}, "group_map"),
    ({"group_map": [[-1, 0]]}, "group_map"), ({"groups": 2, "index": 1}, "index"), ({"groups": 2, "init": "median"}, "init"),
])
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        LayersShare.from_dict(options)


@pytest.mark.parametrize("config,match", [
    (LayersShare(groups=7), "more than the 6 blocks"),
    (LayersShare(group_map=[[4, 6]]), "block 6"),
    (LayersShare(groups=3, init="index", index=2), "index 2 is outside"),
])
def test_options_that_do_not_fit_the_model_are_method_errors(config: LayersShare, match: str) -> None:
    with pytest.raises(MethodError, match=match):
        slimkit.apply(_bert(), config)


def test_a_model_without_a_block_list_is_a_method_error_naming_what_is_missing() -> None:
    with pytest.raises(MethodError, match="share.layers: found no nn.ModuleList of same-class blocks"):
        slimkit.apply(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), LayersShare(groups=1))


def test_a_tampered_record_does_not_restore(tmp_path: Path) -> None:
    _saved(tmp_path, LayersShare(groups=3))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["records"][0]["data"]["lists"]["encoder.layer"]["groups"] = [[0, 9]]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="share.layers"):
        slimkit.restore(tmp_path, model=lambda: _bert(seed=1))
