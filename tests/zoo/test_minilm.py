"""zoo:minilm-l6 matches sentence-transformers, and the text tasks (stsb, sst2-probe) on real data."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from slimkit import zoo
from slimkit.core.context import call_model
from slimkit.core.errors import DataError
from slimkit.zoo.minilm import SentenceEmbedder, minilm_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = ["A man is playing the cello.", "x", "The quick brown fox jumps over the lazy dog, twice, at dawn."]


@pytest.fixture(scope="module")
def minilm() -> zoo.ZooModel:
    return zoo.load("zoo:minilm-l6")


def test_structure_and_example_inputs(minilm: zoo.ZooModel) -> None:
    m = minilm.model
    assert isinstance(m, SentenceEmbedder) and minilm.family == "text" and minilm.default_task == "stsb"
    assert m.encoder.config is m.config and m.config.num_hidden_layers == 6
    assert sum(p.numel() for p in m.parameters()) == 22_713_216
    assert m.config._attn_implementation == "sdpa"
    batch = minilm.example_inputs(2, seq_len=16)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, 16) and bool((batch["attention_mask"] == 1).all())
    assert int(batch["input_ids"][0, 0]) == minilm.tokenizer.hf.cls_token_id
    with torch.no_grad():
        out = call_model(m, batch)
    assert out.shape == (2, 384)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_matches_sentence_transformers(minilm: zoo.ZooModel) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path()), device="cpu")
    ref = torch.tensor(st.encode(SENTENCES))  # [3, 384]
    with torch.no_grad():
        ours = minilm.model(**minilm.tokenizer.encode(SENTENCES))  # padded batch: the mask must matter
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5)


def test_hf_specs_wrap_st_folders_and_load_plain_ones(minilm: zoo.ZooModel, tmp_path: Path) -> None:
    st = zoo.load(f"hf:{minilm_path()}")
    assert isinstance(st.model, SentenceEmbedder) and st.model.pooling == "mean" and st.model.normalize
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in minilm_path().iterdir():  # the same folder without modules.json: a bare BertModel
        if f.is_file() and f.name != "modules.json":
            (plain / f.name).symlink_to(f)
    raw = zoo.load(f"hf:{plain}")
    assert not isinstance(raw.model, SentenceEmbedder) and raw.default_task is None
    batch = raw.example_inputs(1, seq_len=8)
    with torch.no_grad():
        assert raw.model(**batch).last_hidden_state.shape == (1, 8, 384)
    with pytest.raises(DataError, match="tensor output"):  # raw HF outputs cannot feed a sentence task
        zoo.get_task("stsb").evaluate(raw, limit=4)


@pytest.mark.slow
@pytest.mark.data
def test_stsb_spearman_on_full_test_split(minilm: zoo.ZooModel, data_dir: Path) -> None:
    m = zoo.get_task("stsb").evaluate(minilm)
    assert m["n"] == 1500
    assert m["spearman"] > 0.78 and m["spearman_x100"] == pytest.approx(100 * m["spearman"])
    assert 0.75 < m["pearson"] < 0.95


@pytest.mark.data
def test_stsb_fidelity_batches_and_loss(minilm: zoo.ZooModel, data_dir: Path) -> None:
    task = zoo.get_task("stsb")
    damaged = copy.deepcopy(minilm.model)
    with torch.no_grad():
        for p in damaged.encoder.encoder.layer[5].parameters():
            p.mul_(0.5)
    m = task.evaluate(damaged, minilm, reference=minilm.model, limit=40)
    assert m["n"] == 40 and 0.3 < m["embedding_cosine"] < 0.999
    calib = task.calibration_batches(minilm, 2, 4)
    assert len(calib) == 2 and calib[0]["input_ids"].shape[0] == 4
    assert calib[0]["input_ids"].shape == calib[0]["attention_mask"].shape
    inputs, target = next(iter(task.train_batches(minilm, 4)))
    assert inputs["input_ids"].shape[0] == 8 and target.shape == (4,) and 0 <= float(target.min())
    model = copy.deepcopy(minilm.model).train()
    loss = task.loss_fn(model, (inputs, target))
    loss.backward()
    assert 0.0 <= loss.item() < 0.25  # the pretrained model already scores pairs well
    assert model.encoder.embeddings.word_embeddings.weight.grad is not None


@pytest.mark.data
def test_sst2_probe_on_a_prefix(minilm: zoo.ZooModel, data_dir: Path) -> None:
    m = zoo.get_task("sst2-probe").evaluate(minilm.model, minilm, limit=200)
    assert m["n"] == 200 and m["n_train"] == 200
    assert m["accuracy"] > 0.65  # far above the 0.5 chance level even with a small probe
    with pytest.raises(DataError, match="ZooModel"):
        zoo.get_task("sst2-probe").evaluate(minilm.model)  # a bare module has no tokenizer
    with pytest.raises(DataError, match="text"):
        zoo.get_task("stsb").check_model(zoo.load("zoo:digits-cnn"))


@pytest.mark.data
def test_unlabeled_corpus_is_train_only_bucketed_and_lazy(minilm: zoo.ZooModel, data_dir: Path) -> None:
    from slimkit.zoo.data import read_sst2, read_stsb
    from slimkit.zoo.task_base import Deferred
    from slimkit.zoo.text_tasks import unlabeled_sentences

    texts = unlabeled_sentences()
    assert len(texts) == len(set(texts)) > 60_000
    test_side = set(read_stsb("test")[0]) | set(read_sst2("test")[0])
    assert not test_side & set(texts)  # no evaluation sentence is distillation data
    train_side = set(read_stsb("train")[0]) | set(read_sst2("train")[0])
    assert len(train_side & set(texts)) > 0.99 * len(train_side - test_side)
    built = []
    corpus = zoo.get_task("stsb").unlabeled_batches(minilm, 64)
    assert isinstance(corpus, Deferred)
    corpus._build = (lambda f: (lambda: built.append(1) or f()))(corpus._build)
    first = corpus[0]
    task = zoo.get_task("stsb")
    k, own = task.in_domain_repeat, [t for t in task._sentences() if t in set(texts)]
    n_base, n_own = -(-len(texts) // 64), -(-len(own) // 64)
    assert built == [1] and len(corpus) == n_base + (k - 1) * n_own and built == [1]  # built once, on first use
    # the oversampled STS-B batches are the same objects each time (one teacher run each)
    assert len({id(b) for b in corpus.items}) == n_base + (n_own if k > 1 else 0)
    widths = [b["input_ids"].shape[1] for b in corpus.items[:50]]
    padding = [float((b["attention_mask"] == 0).float().mean()) for b in corpus.items[:50]]
    assert max(widths) <= 64 and max(padding) < 0.35  # length buckets: little padding
    assert set(first) == {"input_ids", "attention_mask"}
