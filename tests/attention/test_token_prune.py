"""attention.token_prune: later blocks see fewer tokens; the output stays full length and correct."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import slimkit
from slimkit import measure
from slimkit.attention import token_math as tm
from slimkit.attention.token_prune import TokenPruneAttention, TokenPruneEncoder
from slimkit.core import ArtifactError, ConfigError, Context, MethodError, Targets, config_class
from slimkit.zoo.minilm import SentenceEmbedder

pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny_bert(seed: int = 0, layers: int = 4, impl: str = "sdpa", **kw: Any) -> transformers.BertModel:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, attn_implementation=impl, **kw)
    return transformers.BertModel(cfg).eval()


def batch(lengths: list[int], width: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (len(lengths), width), generator=gen)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        mask[r, :n] = 1
        ids[r, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def prune(model: torch.nn.Module, **kw: Any) -> torch.nn.Module:
    return slimkit.apply(model, TokenPruneAttention(**kw), Targets())


def block_lengths(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> list[int]:
    """Sequence length each block of ``model.encoder`` processes on ``x``."""
    seen: list[int] = []
    hooks = [b.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1])) for b in model.encoder.layer]
    with torch.no_grad():
        model(**x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_later_blocks_are_shorter_and_output_full_length(impl: str) -> None:
    model = tiny_bert(impl=impl)
    x = batch([20, 20])
    pruned = prune(model, keep=(1.0, 0.6, 0.4, 0.3))
    assert isinstance(pruned.encoder, TokenPruneEncoder)
    assert block_lengths(pruned, x) == [20, 12, 8, 6]  # ceil(f * 20)
    with torch.no_grad():
        out = pruned(**x).last_hidden_state
    assert out.shape == (2, 20, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out, model(**x).last_hidden_state)


def test_keep_one_is_identical_to_the_original() -> None:
    model = tiny_bert()
    x = batch([20, 13, 4])
    with torch.no_grad():
        ref = model(**x).last_hidden_state
        got = prune(model, keep=(1.0, 1.0, 1.0, 1.0))(**x).last_hidden_state
    assert torch.equal(got, ref)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("score", ["cls", "mean", "key_norm"])
def test_padded_rows_match_each_row_alone(impl: str, score: str) -> None:
    """Keep counts follow each row's real length; fillers and padding are masked."""
    pruned = prune(tiny_bert(impl=impl), keep=(1.0, 0.7, 0.5, 0.3), score=score)
    lengths = [20, 13, 5, 2]
    x = batch(lengths)
    with torch.no_grad():
        out = pruned(**x).last_hidden_state
        for r, n in enumerate(lengths):
            alone = pruned(input_ids=x["input_ids"][r:r + 1, :n], attention_mask=x["attention_mask"][r:r + 1, :n])
            torch.testing.assert_close(out[r, :n], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert block_lengths(pruned, x) == [20, 14, 10, 6]  # widest row: ceil(f * 20)


def test_dropped_tokens_keep_their_last_state_and_cls_sep_are_kept() -> None:
    model = tiny_bert(layers=2)
    pruned = prune(copy.deepcopy(model), keep=(1.0, 0.5))
    x = batch([10, 7])
    first: list[torch.Tensor] = []
    hook = model.encoder.layer[0].register_forward_hook(lambda _m, _a, out: first.append(out))
    with torch.no_grad():
        model(**x)
        out = pruned(**x).last_hidden_state
    hook.remove()
    after0 = first[0]  # [B, S, H]: block 0's output (shared weights: deepcopy of the same model)
    for r, n in enumerate([10, 7]):
        unchanged = [(out[r, j] == after0[r, j]).all().item() for j in range(n)]
        assert sum(not u for u in unchanged) == -(-n // 2)  # ceil(0.5 n) tokens ran block 1
        assert not unchanged[0] and not unchanged[n - 1]  # [CLS] and [SEP] always kept


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_pooling_is_independent_of_padding(pooling: str) -> None:
    emb = SentenceEmbedder(prune(tiny_bert(), keep=(1.0, 0.8, 0.5, 0.3)), pooling=pooling).eval()
    lengths = [18, 9, 3]
    x = batch(lengths)
    with torch.no_grad():
        got = emb(**x)
        for r, n in enumerate(lengths):
            alone = emb(x["input_ids"][r:r + 1, :n], x["attention_mask"][r:r + 1, :n])
            torch.testing.assert_close(got[r], alone[0], atol=1e-5, rtol=1e-5)


def test_start_ratio_schedule_and_config_checks() -> None:
    assert tm.schedule(4, (), 2, 0.5) == [1.0, 1.0, 0.5, 0.25]
    pruned = prune(tiny_bert(), start=2, ratio=0.5)
    assert pruned.encoder.fractions == [1.0, 1.0, 0.5, 0.25]
    assert config_class("attention.token-prune") is TokenPruneAttention
    for bad in ({"keep": (0.9, 0.5)}, {"keep": (1.0, 0.5, 0.7)}, {"keep": (1.0, 0.0)}, {},
                {"keep": (1.0, 0.5), "ratio": 0.5}, {"start": 0, "ratio": 0.5}, {"start": 1, "ratio": 1.0}):
        with pytest.raises(ConfigError):
            TokenPruneAttention(**bad)
    with pytest.raises(MethodError, match="3 entries"):
        prune(tiny_bert(), keep=(1.0, 0.5, 0.5))
    with pytest.raises(MethodError, match="start=4"):
        prune(tiny_bert(), start=4, ratio=0.5)


def test_keep_counts_and_selection_math() -> None:
    counts = tm.keep_counts(torch.tensor([20, 7, 2, 1, 0]), 0.3)
    assert counts.tolist() == [6, 3, 2, 1, 0]
    pos = torch.arange(6).expand(2, 6)
    alive = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.2, 0.0], [0.0, 0.5, 0.0, 0.9, 0.9, 0.9]])
    lengths = alive.sum(1)
    idx, ok = tm.select(scores, torch.tensor([4, 2]), alive, tm.protected(pos, lengths), pos)
    assert idx[0].tolist() == [0, 1, 3, 5] and ok[0].all()  # CLS, two best, last token
    assert idx[1, :2].tolist() == [0, 2] and ok[1].tolist() == [True, True, False, False]  # padding never kept


def test_save_restore_is_bit_exact_and_checks_the_record(tmp_path: Path) -> None:
    pruned = prune(tiny_bert(), keep=(1.0, 0.7, 0.5, 0.3), score="mean")
    x = batch([20, 11])
    slimkit.save(pruned, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: tiny_bert(seed=1))
    with torch.no_grad():
        assert torch.equal(restored(**x).last_hidden_state, pruned(**x).last_hidden_state)
    assert restored.encoder.fractions == pruned.encoder.fractions and restored.encoder.score == "mean"
    manifest = tmp_path / "m" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"score": "mean"', '"score": "nope"'))
    with pytest.raises(ArtifactError):
        slimkit.restore(tmp_path / "m", model=lambda: tiny_bert(seed=1))


def test_profile_counts_the_shorter_sequence() -> None:
    model = tiny_bert()
    x = batch([32, 32], width=32)
    dense = measure.profile(model, x).macs
    sparse = measure.profile(prune(model, keep=(1.0, 0.5, 0.5, 0.5)), x).macs
    assert sparse < 0.8 * dense  # 3 of 4 blocks at half length: about 0.6x of the block MACs


def test_export_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    from slimkit.export.onnx import OnnxExport

    pruned = prune(tiny_bert(layers=2), keep=(1.0, 0.5))
    x = batch([8, 8], width=8)
    ctx = Context(example_inputs=x, extras={"export_dir": str(tmp_path)})
    with pytest.raises(MethodError, match="cannot be exported"):
        slimkit.apply(pruned, OnnxExport(file="m.onnx"), Targets(), ctx)


def test_unsupported_models_and_depth_changes_fail_clearly() -> None:
    with pytest.raises(MethodError, match="decoder"):
        prune(tiny_bert(is_decoder=True), keep=(1.0, 0.5, 0.5, 0.5))
    pruned = prune(tiny_bert(), keep=(1.0, 0.5, 0.5, 0.5))
    with pytest.raises(MethodError, match="already token-pruned"):
        prune(pruned, keep=(1.0, 0.5, 0.5, 0.5))
    del pruned.encoder.layer[3]
    with pytest.raises(MethodError, match="prune.layers"):
        pruned(**batch([6]))


def test_vit_is_refused_naming_what_is_unsupported() -> None:
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3,
                                 num_attention_heads=4, intermediate_size=64)
    vit = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    with pytest.raises(MethodError, match="ViT"):
        prune(vit, keep=(1.0, 0.5, 0.25))


def test_distillation_trains_the_pruned_model() -> None:
    """distill.embedding (the recovery step) runs through the gather/scatter and moves the weights."""
    from slimkit.core import Recipe

    teacher = SentenceEmbedder(tiny_bert(), pooling="mean").eval()
    student = SentenceEmbedder(prune(tiny_bert(), keep=(1.0, 0.7, 0.5, 0.3)), pooling="mean")
    data = [batch([20, 12, 5], seed=s) for s in range(3)]
    before = student.encoder.encoder.layer[3].output.dense.weight.detach().clone()
    ctx = Context(unlabeled_data=data, teacher=teacher, progress=False, seed=0)
    out = Recipe.from_dict({"name": "t", "steps": [{"kind": "distill.embedding", "with": {
        "steps": 3, "lr": 1e-3, "data": "unlabeled"}}]}).run(student, ctx)
    assert isinstance(out.encoder.encoder, TokenPruneEncoder)
    assert not torch.equal(out.encoder.encoder.layer[3].output.dense.weight, before)


def test_composes_with_dynamic_int8_and_restores(tmp_path: Path) -> None:
    """The blocks are the original modules: quantize.dynamic swaps their Linears, scoring still hooks them."""
    from slimkit.quantize.ptq import DynamicQuant

    pruned = prune(tiny_bert(), keep=(1.0, 0.6, 0.4, 0.3))
    q = slimkit.apply(pruned, DynamicQuant(), Targets(types=("Linear",)))
    x = batch([20, 9])
    assert block_lengths(q, x) == [20, 12, 8, 6]
    slimkit.save(q, tmp_path / "q")
    restored = slimkit.restore(tmp_path / "q", model=lambda: tiny_bert(seed=1))
    with torch.no_grad():
        assert torch.equal(restored(**x).last_hidden_state, q(**x).last_hidden_state)


def test_min_keep_leaves_short_rows_unpruned_and_long_rows_pruned() -> None:
    assert tm.keep_counts(torch.tensor([20, 7, 2, 1, 0]), 0.3, 5).tolist() == [6, 5, 2, 1, 0]
    model = tiny_bert()
    pruned = prune(model, keep=(1.0, 0.5, 0.3, 0.3), min_keep=8)
    x = batch([20, 6])
    assert block_lengths(pruned, x) == [20, 10, 8, 8]  # ceil(.5 * 20); max(ceil(.3 * 20), 8)
    with torch.no_grad():
        got = pruned(**x).last_hidden_state
        dense = model(**x).last_hidden_state
    torch.testing.assert_close(got[1, :6], dense[1, :6], atol=1e-5, rtol=1e-5)  # 6 <= min_keep: untouched
    assert not torch.allclose(got[0, :20], dense[0, :20], atol=1e-3)


def test_merge_math_is_a_size_weighted_mean_into_the_most_similar_kept_slot() -> None:
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.2], [1.0, 1.0]]])  # [1, 5, 2]
    alive = torch.tensor([[True, True, True, True, False]])  # slot 4 is padding
    index, kept = torch.tensor([[0, 1, 3, 4]]), torch.tensor([[True, True, True, False]])
    always = torch.tensor([[True, False, False, False, False]])  # slot 0 is [CLS]: never a host
    target = tm.merge_targets(keys, index, kept, alive, always)
    assert target.tolist() == [[0, 1, 1, 2, 0]]  # slot 2 ~ slot 1 (new 1); slot 3 kept (new 2)
    x = torch.tensor([[[1.0], [2.0], [6.0], [10.0], [99.0]]])
    size = torch.tensor([[1.0, 1.0, 3.0, 1.0, 1.0]])
    merged, new_size = tm.merge_rows(x, size, target, alive, index, kept)
    assert merged[0, :3, 0].tolist() == [1.0, 5.0, 10.0] and new_size.tolist() == [[1.0, 4.0, 1.0, 0.0]]
    assert merged[0, 3, 0].item() == 99.0  # a filler keeps a finite value (masked downstream)


def test_merging_identical_tokens_with_proportional_attention_is_exact() -> None:
    """Without positions a token and its twin have equal states: merging the twin into it (size 2,
    +log 2 on its logits) must give every query and the full-length output exactly the dense result."""
    model = tiny_bert(layers=4)
    with torch.no_grad():
        model.embeddings.position_embeddings.weight.zero_()
    ids = torch.tensor([[2, 7, 7, 7, 9, 9, 9, 3]])
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pruned = prune(copy.deepcopy(model), keep=(1.0, 0.875, 0.75, 0.75), reduce="merge")
    assert block_lengths(pruned, x) == [8, 7, 6, 6]
    with torch.no_grad():
        got, dense = pruned(**x).last_hidden_state, model(**x).last_hidden_state
    torch.testing.assert_close(got, dense, atol=1e-5, rtol=1e-5)
    dropped = prune(copy.deepcopy(model), keep=(1.0, 0.875, 0.75, 0.75))  # dropping instead: not exact
    with torch.no_grad():
        assert not torch.allclose(dropped(**x).last_hidden_state, dense, atol=1e-4)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_merge_rows_match_each_row_alone_and_pool_a_weighted_mean(impl: str) -> None:
    pruned = prune(tiny_bert(impl=impl), keep=(1.0, 0.7, 0.5, 0.3), reduce="merge", min_keep=3)
    lengths = [20, 13, 5, 2]
    x = batch(lengths)
    with torch.no_grad():
        out = pruned(**x).last_hidden_state
        for r, n in enumerate(lengths):
            alone = pruned(input_ids=x["input_ids"][r:r + 1, :n], attention_mask=x["attention_mask"][r:r + 1, :n])
            torch.testing.assert_close(out[r, :n], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    distinct = len({tuple(v.tolist()) for v in out[0, :20]})
    assert distinct == 6  # every position carries one of the ceil(0.3 * 20) final slots' states


def test_merge_and_min_keep_save_restore_and_config_checks(tmp_path: Path) -> None:
    pruned = prune(tiny_bert(), keep=(1.0, 0.7, 0.5, 0.3), reduce="merge", min_keep=4)
    x = batch([20, 11])
    slimkit.save(pruned, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: tiny_bert(seed=1))
    with torch.no_grad():
        assert torch.equal(restored(**x).last_hidden_state, pruned(**x).last_hidden_state)
    assert (restored.encoder.reduce, restored.encoder.min_keep) == ("merge", 4)
    for bad in ({"reduce": "fuse"}, {"min_keep": -1}, {"min_keep": True}):
        with pytest.raises(ConfigError):
            TokenPruneAttention(keep=(1.0, 0.5), **bad)
    manifest = tmp_path / "m" / "manifest.json"
    text = manifest.read_text()
    for old, new in (('"reduce": "merge"', '"reduce": "fuse"'), ('"min_keep": 4', '"min_keep": -4')):
        manifest.write_text(text.replace(old, new))
        with pytest.raises(ArtifactError):
            slimkit.restore(tmp_path / "m", model=lambda: tiny_bert(seed=1))


def test_key_norm_score_keeps_the_largest_keys() -> None:
    k = torch.tensor([[[0.0, 1.0], [3.0, 4.0], [0.1, 0.1], [2.0, 0.0], [9.0, 9.0]]])  # norms 1, 5, .14, 2, 12.7
    alive = torch.tensor([[True, True, True, True, False]])
    s = tm.key_norm_scores(torch.zeros_like(k), k, alive, heads=1)
    torch.testing.assert_close(s, torch.tensor([[1.0, 5.0, 0.1 * 2 ** 0.5, 2.0, 0.0]]))
    pos = torch.arange(5).expand(1, 5)
    idx, ok = tm.select(s, torch.tensor([3]), alive, tm.protected(pos, alive.sum(1)), pos)
    assert idx[0].tolist() == [0, 1, 3] and ok.all()  # [CLS], the largest key, the last real token
    with pytest.raises(ConfigError):
        TokenPruneAttention(keep=(1.0, 0.5), score="value_norm")


def test_merge_needs_an_implementation_that_takes_a_logit_bias() -> None:
    pruned = prune(tiny_bert(), keep=(1.0, 0.5, 0.5, 0.5), reduce="merge")
    enc = pruned.encoder
    h, alive, size = torch.zeros(1, 3, 32), torch.tensor([[True, True, False]]), torch.tensor([[1.0, 2.0, 0.0]])
    bias = enc._mask(h, alive, size)  # [B, 1, 1, K]: log(size) on real slots, a huge negative on the rest
    assert bias.shape == (1, 1, 1, 3) and bias[0, 0, 0, 1].item() == pytest.approx(0.6931, abs=1e-4)
    assert bias[0, 0, 0, 2].item() < -1e30
    enc.config._attn_implementation = "flash_attention_2"
    with pytest.raises(MethodError, match="eager or sdpa"):
        enc._mask(h, alive, size)
