"""``distill.embedding`` options: which data it trains on, the one-pass teacher cache, and
the block-to-block (hidden-state) supervision a depth-pruned student gets."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, MethodError, Targets, records
from slimkit.distill.cache import cache_outputs
from slimkit.distill.methods import EmbeddingDistill, block_pairs, token_cosine_loss
from slimkit.prune.layers import LayerPrune


class TinyEncoder(nn.Module):
    """``{"input_ids", "attention_mask"} -> normalised mean-pooled [B, H]``, blocks in ``layers``."""

    def __init__(self, depth: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(40, 12)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(12, 12), nn.Tanh()) for _ in range(depth))
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.emb(input_ids)  # [B, T, H]
        for block in self.layers:
            h = h + block(h)
        m = attention_mask.unsqueeze(-1).float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)  # [B, H]


def batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 40, (8, 6), generator=g)
        mask = torch.ones(8, 6, dtype=torch.long)
        mask[:4, 4:] = 0  # padded tail on half the rows
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_auto_prefers_the_unlabeled_corpus_and_explicit_sources_must_exist() -> None:
    teacher = TinyEncoder(seed=1)
    corpus, calib = batches(3, 0), batches(2, 1)
    seen: list[int] = []

    class Spy(TinyEncoder):
        def forward(self, input_ids, attention_mask):  # type: ignore[override]
            seen.append(int(input_ids.sum()))
            return super().forward(input_ids, attention_mask)

    student = Spy(seed=2)
    cfg = EmbeddingDistill(steps=3, lr=0.01)
    slimkit.apply(student, cfg, Targets(), Context(unlabeled_data=corpus, calib_data=calib, teacher=teacher,
                                                   progress=False))
    assert seen and set(seen) <= {int(b["input_ids"].sum()) for b in corpus}
    with pytest.raises(MethodError, match=r"Context.train_data"):
        slimkit.apply(student, EmbeddingDistill(steps=1, data="train"), Targets(),
                      Context(calib_data=calib, teacher=teacher, progress=False))


def test_cached_teacher_runs_once_per_batch_and_trains_like_the_live_teacher() -> None:
    data = batches(4, 3)
    cfg = dict(steps=12, lr=0.02, seed=0)
    teacher = TinyEncoder(seed=1)
    live = slimkit.apply(TinyEncoder(seed=2), EmbeddingDistill(**cfg), Targets(),
                         Context(train_data=data, teacher=teacher, progress=False))
    assert teacher.calls == 12
    teacher.calls = 0
    cached = slimkit.apply(TinyEncoder(seed=2), EmbeddingDistill(**cfg, cache_teacher=True), Targets(),
                           Context(train_data=data, teacher=teacher, progress=False))
    assert teacher.calls == len(data)  # one pass, then the cache
    for a, b in zip(live.parameters(), cached.parameters()):
        torch.testing.assert_close(a, b)
    assert records(cached)[-1].summary["steps"] == 12


def test_cache_needs_a_sequence_and_stores_token_states_in_fp16() -> None:
    with pytest.raises(MethodError, match="sequence"):
        cache_outputs(TinyEncoder(), iter(batches(2, 0)))
    class Both(nn.Module):
        def forward(self, input_ids, attention_mask):
            return input_ids.float()[:, :1], [torch.ones(2, 3, 4)]

    out = cache_outputs(Both(), batches(1, 0))
    assert out[0][0].dtype == torch.float32 and out[0][1][0].dtype == torch.float16


def test_block_pairs_map_student_blocks_uniformly_onto_teacher_blocks() -> None:
    teacher = TinyEncoder(depth=6)
    student = slimkit.apply(teacher, LayerPrune(drop=(0, 2, 4)), Targets(), Context())
    s, t = block_pairs(student, teacher)
    assert s == ["layers.0", "layers.1", "layers.2"]
    assert t == ["layers.1", "layers.3", "layers.5"]


def test_token_cosine_loss_ignores_masked_positions() -> None:
    s = torch.randn(2, 3, 4)
    t = s.clone()
    t[:, 2] = -s[:, 2]  # only the last position disagrees (cos = -1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert float(token_cosine_loss(s, t, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(token_cosine_loss(s, t, None)) == pytest.approx(2.0 / 3.0, abs=1e-5)


def test_hidden_supervision_pulls_student_blocks_toward_their_teacher_blocks() -> None:
    teacher = TinyEncoder(depth=4, seed=1)
    data = batches(6, 4)
    start = slimkit.apply(teacher, LayerPrune(drop=(0, 2)), Targets(), Context())
    for layer in start.layers:  # perturb so there is something to learn
        nn.init.normal_(layer[0].weight, std=0.5)

    def block_gap(model: nn.Module) -> float:
        s_names, t_names = block_pairs(model, teacher)
        from slimkit.distill.strategies import FeatureTap

        with torch.no_grad(), FeatureTap(model, s_names) as ts, FeatureTap(teacher, t_names) as tt:
            model(**data[0])
            teacher(**data[0])
        return sum(float(token_cosine_loss(ts.outputs[a], tt.outputs[b], data[0]["attention_mask"]))
                   for a, b in zip(s_names, t_names))

    seen: list[type] = []

    def eval_fn(m: nn.Module) -> dict[str, float]:
        seen.append(type(m))
        return {"gap": block_gap(m)}

    ctx = Context(train_data=data, teacher=teacher, progress=False, eval_fn=eval_fn)
    plain = slimkit.apply(start, EmbeddingDistill(steps=60, lr=0.02), Targets(), ctx)
    hidden = slimkit.apply(start, EmbeddingDistill(steps=60, lr=0.02, hidden=1.0, cache_teacher=True), Targets(), ctx)
    assert block_gap(hidden) < 0.7 * block_gap(start)
    assert block_gap(hidden) < block_gap(plain)
    assert isinstance(hidden, TinyEncoder)  # the wrapper used for training is not what comes back
    assert seen == [TinyEncoder, TinyEncoder]  # the engine's final evaluation sees the bare student too


def test_hidden_must_be_non_negative() -> None:
    with pytest.raises(Exception, match="hidden"):
        EmbeddingDistill(hidden=-1.0)


def test_freeze_keeps_matching_parameters_fixed_and_names_unknown_patterns() -> None:
    teacher = TinyEncoder(seed=1)
    data = batches(3, 6)
    student = TinyEncoder(seed=2)
    out = slimkit.apply(student, EmbeddingDistill(steps=10, lr=0.05, freeze=("emb.*",), hidden=0.5), Targets(),
                        Context(train_data=data, teacher=teacher, progress=False))
    assert torch.equal(out.emb.weight, student.emb.weight)  # frozen
    assert not torch.equal(out.layers[0][0].weight, student.layers[0][0].weight)  # trained
    assert all(p.requires_grad for p in out.parameters())  # freezing is undone afterwards
    with pytest.raises(MethodError, match="nothing_like_this"):
        slimkit.apply(student, EmbeddingDistill(steps=1, freeze=("nothing_like_this",)), Targets(),
                      Context(train_data=data, teacher=teacher, progress=False))


def test_cache_runs_the_teacher_once_per_distinct_batch_object() -> None:
    teacher = TinyEncoder(seed=1)
    base = batches(3, 0)
    data = [base[0], base[1], base[0], base[2], base[0]]  # base[0] oversampled 3x
    out = cache_outputs(teacher, data)
    assert teacher.calls == 3 and len(out) == 5
    assert out[0] is out[2] is out[4]
    equal_but_distinct = [dict(base[1])]  # same values, another object: its own teacher run
    cache_outputs(teacher, equal_but_distinct)
    assert teacher.calls == 4
    torch.testing.assert_close(out[1], teacher(**base[1]))


def test_dropout_option_is_validated_and_reaches_the_loop() -> None:
    assert EmbeddingDistill.from_dict({"dropout": 0}).dropout == 0
    with pytest.raises(Exception, match="dropout"):
        EmbeddingDistill(dropout=1.5)
    teacher, data = TinyEncoder(seed=1), batches(3, 6)
    runs = []
    for rate in (None, 0.0):
        student = TinyEncoder(seed=2)
        student.layers.append(nn.Dropout(0.5))
        runs.append(slimkit.apply(student, EmbeddingDistill(steps=5, lr=0.05, dropout=rate), Targets(),
                                  Context(train_data=data, teacher=teacher, progress=False, seed=0)))
        assert runs[-1].layers[-1].p == 0.5  # the rate is restored after training
    assert not torch.equal(runs[0].layers[0][0].weight, runs[1].layers[0][0].weight)


def test_freeze_takes_re_patterns_like_targets() -> None:
    teacher, student = TinyEncoder(seed=1), TinyEncoder(seed=2)
    out = slimkit.apply(student, EmbeddingDistill(steps=5, lr=0.05, freeze=(r"re:emb\.weight",)), Targets(),
                        Context(train_data=batches(3, 6), teacher=teacher, progress=False))
    assert torch.equal(out.emb.weight, student.emb.weight)
    assert not torch.equal(out.layers[0][0].weight, student.layers[0][0].weight)
    with pytest.raises(ConfigError) as err:
        EmbeddingDistill(freeze=("re:(",))
    assert err.value.key == "freeze"
