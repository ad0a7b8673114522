"""prune.vocab: trimmed tables reproduce kept ids exactly, map the rest to unk, and round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit
from slimkit.core import ConfigError, Context, MethodError, Targets
from slimkit.prune.vocab import TrimmedEmbedding, VocabPrune, token_counts

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"always_keep": (0, 1), "unk_id": 1}  # the BERT defaults (100..103) lie outside a 50-id table


class Tiny(nn.Module):
    """A word table, a small position table and a head: just enough to have something to trim."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(50, 16, padding_idx=0)
        self.pos = nn.Embedding(8, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.pos(torch.arange(ids.shape[-1]))  # [B, T, H]
        return self.fc(h)  # [B, T, 4]


def corpus() -> list:
    """Counts: id 0 x1, 2 x1, 3 x2, 5 x3, 7 x1 (8 tokens), in the three batch forms."""
    return [
        torch.tensor([[2, 3, 3, 5]]),
        {"input_ids": torch.tensor([[5, 5, 7, 0]])},
        (torch.randn(1, 3), torch.zeros(1)),  # a float batch holds no ids: skipped
    ]


def trimmed(**options) -> tuple[nn.Module, nn.Module]:
    model = Tiny()
    out = slimkit.apply(model, VocabPrune(**{**SMALL, **options}), ctx=Context(calib_data=corpus(), progress=False))
    return model, out


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_token_counts_reads_every_batch_form() -> None:
    counts = token_counts([corpus(), [({"input_ids": torch.tensor([[7]])}, torch.zeros(1))], None], 50)
    assert counts is not None
    assert {i: int(c) for i, c in enumerate(counts) if c} == {0: 1, 2: 1, 3: 2, 5: 3, 7: 2}
    assert token_counts([[torch.randn(2, 3)], None], 50) is None
    with pytest.raises(MethodError, match="outside"):
        token_counts([[torch.tensor([50])]], 50)


def test_kept_ids_are_exact_and_dropped_ids_act_as_unk() -> None:
    model, out = trimmed()
    assert isinstance(out.emb, TrimmedEmbedding) and isinstance(out.pos, nn.Embedding)  # only the word table
    kept = [0, 1, 2, 3, 5, 7]
    (rec,) = slimkit.records(out)
    assert rec.data["kept"] == kept and rec.data["num_embeddings"] == 50
    assert out.emb.num_embeddings == 50 and out.emb.embedding_dim == 16
    assert torch.equal(out.emb.weight, model.emb.weight[kept])  # increasing old-id order
    ids = torch.tensor([kept + [1, 1]])  # [1, 8]
    with torch.no_grad():
        assert torch.equal(out(ids), model(ids))
        dropped = torch.tensor([[4, 9, 49, 6, 10, 11, 12, 13]])
        assert torch.equal(out(dropped), model(torch.ones_like(dropped)))  # unk_id = 1
    assert params(model) - params(out) == (50 - len(kept)) * 16
    assert rec.summary == {"kept_rows": 6, "num_embeddings": 50, "kept_fraction": 0.12, "coverage": 1.0,
                           "params_removed": 44 * 16}


def test_padding_row_stays_padding() -> None:
    _, out = trimmed(always_keep=(1,))  # padding_idx 0 is kept anyway
    emb = out.emb
    assert emb.padding_idx == 0 and emb.padding_row == 0 and int(emb.remap[0]) == 0
    emb(torch.tensor([[0, 2, 3]])).sum().backward()
    assert torch.equal(emb.weight.grad[0], torch.zeros(16)) and emb.weight.grad[1:].abs().sum() > 0


def test_coverage_counts_token_occurrences() -> None:
    _, out = trimmed(keep_ids=(1, 3, 5))  # + padding 0: covers 1 + 2 + 3 of 8 occurrences
    (rec,) = slimkit.records(out)
    assert rec.data["kept"] == [0, 1, 3, 5] and rec.summary["coverage"] == 0.75
    _, out = trimmed(min_count=2)  # ids 3, 5 (+ 0, 1): 1 + 2 + 3 of 8
    (rec,) = slimkit.records(out)
    assert rec.data["kept"] == [0, 1, 3, 5] and rec.summary["coverage"] == 0.75
    model = Tiny()
    out = slimkit.apply(model, VocabPrune(keep_ids=(1, 2), **SMALL))  # explicit ids and no data
    assert slimkit.records(out)[0].summary["coverage"] is None


def test_save_restore_round_trip(tmp_path: Path) -> None:
    _, out = trimmed()
    slimkit.save(out, tmp_path / "m")
    restored = slimkit.restore(tmp_path / "m", model=lambda: Tiny(seed=1))
    assert isinstance(restored.emb, TrimmedEmbedding) and restored.emb.remap.dtype == torch.int32
    ids = torch.arange(48).reshape(6, 8)
    with torch.no_grad():
        assert torch.equal(restored(ids), out.eval()(ids))


def test_targets_choose_the_tables() -> None:
    model = Tiny()
    ctx = Context(calib_data=corpus(), progress=False)
    out = slimkit.apply(model, VocabPrune(**SMALL), Targets(include=("emb",)), ctx)
    assert isinstance(out.emb, TrimmedEmbedding)
    with pytest.raises(MethodError, match="different vocabulary sizes"):
        slimkit.apply(model, VocabPrune(**SMALL), Targets(types=("Embedding",)), ctx)
    with pytest.raises(MethodError, match="no nn.Embedding"):
        slimkit.apply(model, VocabPrune(**SMALL), Targets(include=("fc",)), ctx)


def test_errors_are_clear() -> None:
    model = Tiny()
    ctx = Context(calib_data=corpus(), progress=False)
    with pytest.raises(MethodError, match="unk_id 100 is not kept"):
        slimkit.apply(model, VocabPrune(), ctx=ctx)  # BERT's unk_id does not exist in 50 ids
    with pytest.raises(MethodError, match="needs keep_ids or a corpus"):
        slimkit.apply(model, VocabPrune(**SMALL), ctx=Context(calib_data=[torch.randn(2, 3)], progress=False))
    with pytest.raises(MethodError, match="outside the vocabulary"):
        slimkit.apply(model, VocabPrune(keep_ids=(1, 50), **SMALL))
    with pytest.raises(ConfigError, match="min_count"):
        VocabPrune(min_count=0)
    with pytest.raises(ConfigError, match="keep_ids"):
        VocabPrune(keep_ids=(-1,))
