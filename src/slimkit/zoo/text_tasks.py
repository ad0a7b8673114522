"""Sentence-embedding tasks: ``stsb`` (similarity) and ``sst2-probe`` (a linear probe on frozen embeddings).

Both take a model whose forward maps ``{"input_ids", "attention_mask"}`` to one vector
per sentence (``[B, H]``). Texts are encoded sorted by token length so each batch pads
to nearly its own length, which makes evaluation several times faster than fixed
128-token padding on CPU. With a ``reference`` model both tasks add
``embedding_cosine``: the mean cosine between the model's and the reference's
embeddings of the same sentences (1.0 = unchanged), a direct measure of compression damage.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..core.context import call_model
from ..core.errors import DataError
from .task_base import (
    Deferred,
    EpochBatches,
    Task,
    accuracy,
    check_limit,
    check_split,
    chunks,
    fixed_subset,
    model_device,
    outputs_of,
    pearson,
    row_cosine,
    spearman,
    to_device,
)

if TYPE_CHECKING:
    from .minilm import TextTokenizer
    from .specs import ZooModel

MAX_LENGTH = 128
EMBED_BATCH = 64
PROBE_TRAIN = 2000  # sentences from SST-2 train the probe is fit on (fixed subset, seed 0)
PROBE_C = 1.0  # inverse L2 strength; chosen on SST-2 dev sentences, never on test (docs/measurements.md)


def encode_sorted(tokenizer: TextTokenizer, texts: Sequence[str], batch_size: int = EMBED_BATCH,
                  max_length: int = MAX_LENGTH) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Batches of ``texts`` in increasing token length, and the order used (``order[k]`` = text of row k)."""
    lengths = tokenizer.lengths(texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    batches = [tokenizer.encode([texts[i] for i in order[s]], max_length) for s in chunks(len(order), batch_size)]
    return batches, order


def embed(model: nn.Module, tokenizer: TextTokenizer, texts: Sequence[str], *, batch_size: int = EMBED_BATCH,
          max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Sentence embeddings ``[N, H]`` in the order of ``texts``."""
    batches, order = encode_sorted(tokenizer, texts, batch_size, max_length)
    out = outputs_of(model, batches)  # [N, H], sorted order
    if out.dim() != 2:
        raise DataError(f"expected one embedding per sentence ([B, H]); the model returned shape {tuple(out.shape)}")
    result = torch.empty_like(out)
    result[torch.tensor(order)] = out
    return result


def unlabeled_sentences() -> list[str]:
    """Every distinct *train* sentence of STS-B (both sides) and SST-2, in a seeded random order
    (about 68 k). No labels are used. STS-B reuses sentences across its splits (276 of the
    2,901 test sentences also occur in train pairs), so every sentence of either test split
    is removed: the reported test metrics never see their inputs during distillation.
    The dev splits are not added: they did not help (docs/presets.md)."""
    from .data import read_sst2, read_stsb

    s1, s2, _ = read_stsb("train")
    sst, _ = read_sst2("train")
    t1, t2, _ = read_stsb("test")
    held_out = {*t1, *t2, *read_sst2("test")[0]}
    out = [s for s in dict.fromkeys([*s1, *s2, *sst]) if s not in held_out]
    random.Random(0).shuffle(out)
    return out


def bucketed_batches(tokenizer: TextTokenizer, texts: Sequence[str], batch_size: int, max_length: int = 64,
                     seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Batches of similar-length texts (little padding), the batches in a seeded random order."""
    lengths = tokenizer.lengths(texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = [tokenizer.encode([texts[i] for i in order[s:s + batch_size]], max_length)
               for s in range(0, len(order), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


class _TextTask(Task):
    families = ("text",)

    def check_model(self, zm: ZooModel) -> None:
        super().check_model(zm)
        if zm.tokenizer is None:
            raise DataError(f"task {self.name!r} needs a tokenizer; {zm.spec} has none")

    def _sentences(self) -> list[str]:
        raise NotImplementedError

    def calibration_batches(self, zm: ZooModel, n_batches: int, batch_size: int) -> list[Any]:
        """Unlabelled training sentences (fixed random subset), padded per batch to the longest."""
        self.check_model(zm)
        assert zm.tokenizer is not None
        texts = self._sentences()
        idx = fixed_subset(len(texts), n_batches * batch_size).tolist()
        return [zm.tokenizer.encode([texts[i] for i in idx[s]], MAX_LENGTH) for s in chunks(len(idx), batch_size)]

    #: How many times the task's own train sentences occur in :meth:`unlabeled_batches`
    #: (once inside the shared corpus, ``in_domain_repeat - 1`` more as their own batches).
    in_domain_repeat: int = 1

    def unlabeled_batches(self, zm: ZooModel, batch_size: int, *, seed: int = 0) -> Deferred:
        """The train sentences of STS-B and SST-2 (:func:`unlabeled_sentences`), length-bucketed,
        at most 64 tokens; tokenised on first use.

        With ``in_domain_repeat`` k > 1, the batches of the task's own train sentences
        (bucketed on their own, test sentences removed) are appended k - 1 more times and
        the whole list is shuffled. The repeats are the *same* batch objects, so a teacher
        cache (:func:`slimkit.distill.cache.cache_outputs`) runs the teacher on them once.
        """
        self.check_model(zm)
        tok = zm.tokenizer
        assert tok is not None

        def build() -> list[dict[str, torch.Tensor]]:
            corpus = unlabeled_sentences()
            batches = bucketed_batches(tok, corpus, batch_size, 64, seed=seed + 1)
            if self.in_domain_repeat > 1:
                kept = set(corpus)
                own = [t for t in self._sentences() if t in kept]
                batches += bucketed_batches(tok, own, batch_size, 64, seed=seed + 2) * (self.in_domain_repeat - 1)
                random.Random(seed + 3).shuffle(batches)
            return batches

        return Deferred(build)


def _fidelity(model: nn.Module, reference: nn.Module, zm: ZooModel, texts: Sequence[str],
              emb: torch.Tensor) -> float:
    assert zm.tokenizer is not None
    ref = embed(reference, zm.tokenizer, texts)
    return float(row_cosine(emb, ref).mean())


class StsbTask(_TextTask):
    """Spearman correlation of embedding cosine similarity with STS-B gold scores, on ``test`` (1500 pairs).

    Keys: ``spearman`` in [-1, 1] (the headline), ``spearman_x100`` (the x100 figure papers
    print, e.g. ~82 for all-MiniLM-L6-v2), ``pearson``, ``n`` pairs, and with a reference
    ``embedding_cosine``.
    """

    name = "stsb"
    metric = "spearman"
    # STS-B's own sentences (news, captions, forums) are 11 k of the 68 k-sentence corpus, the
    # rest SST-2 movie-review phrases; repeating them weights distillation towards the
    # domain STS-B tests. 8 scored best on STS-B dev among 1, 4, 8 and 16 repeats
    # (minilm-fast's student, 1,500-step probes: docs/presets.md#minilm-fast-all-minilm-l6-v2-for-cpu-serving).
    in_domain_repeat = 8
    description = "STS-B sentence similarity; Spearman of cosine vs gold on the test split (GLUE dev)"
    has_training = True

    def _sentences(self) -> list[str]:
        from .data import read_stsb

        s1, s2, _ = read_stsb("train")
        return list(dict.fromkeys(s1 + s2))

    def evaluate(self, model: nn.Module | ZooModel, zm: ZooModel | None = None, *,
                 reference: nn.Module | None = None, limit: int | None = None,
                 split: str = "test") -> dict[str, float]:
        from .data import read_stsb

        check_limit(limit)
        check_split(self.name, split)
        model, zm = self.resolve(model, zm)
        assert zm.tokenizer is not None
        s1, s2, gold = read_stsb(split)
        s1, s2, gold = s1[:limit], s2[:limit], gold[:limit]
        texts = list(dict.fromkeys(s1 + s2))  # each distinct sentence is embedded once
        pos = {t: i for i, t in enumerate(texts)}
        emb = embed(model, zm.tokenizer, texts)  # [U, H]
        a = emb[torch.tensor([pos[t] for t in s1])]  # [N, H]
        b = emb[torch.tensor([pos[t] for t in s2])]  # [N, H]
        cos = row_cosine(a, b).numpy()
        rho = spearman(cos, gold)
        out = {"spearman": rho, "spearman_x100": 100.0 * rho, "pearson": pearson(cos, gold), "n": float(len(gold))}
        if reference is not None:
            out["embedding_cosine"] = _fidelity(model, reference, zm, texts, emb)
        return out

    def train_batches(self, zm: ZooModel, batch_size: int, *, epochs: int = 1, seed: int = 0) -> EpochBatches:
        """``(inputs, target)``: inputs encode ``B`` first sentences then their ``B`` partners
        (``[2B, T]``); target is gold score / 5, ``[B]`` in [0, 1]."""
        from .data import read_stsb

        self.check_model(zm)
        tok = zm.tokenizer
        assert tok is not None
        s1, s2, gold = read_stsb("train")
        score = torch.tensor(gold, dtype=torch.float32) / 5.0

        def make(idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            ids = idx.tolist()
            return tok.encode([s1[i] for i in ids] + [s2[i] for i in ids], MAX_LENGTH), score[idx]

        return EpochBatches(len(gold), batch_size, make, epochs=epochs, seed=seed)

    def loss_fn(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Sentence-transformers' CosineSimilarityLoss: MSE between cos(a, b) and score / 5."""
        inputs, target = to_device(batch, model_device(model))
        emb = call_model(model, inputs)  # [2B, H]
        half = emb.shape[0] // 2
        cos = nn.functional.cosine_similarity(emb[:half], emb[half:], dim=-1)  # [B]
        return nn.functional.mse_loss(cos, target.to(cos.dtype))


class Sst2ProbeTask(_TextTask):
    """Accuracy of a logistic-regression probe on frozen embeddings; fit on 2000 SST-2 train sentences, scored on test.

    ``limit`` caps both the probe's training sentences and the test sentences (quick checks only).
    With a reference: ``embedding_cosine`` on the test sentences.
    """

    name = "sst2-probe"
    metric = "accuracy"
    description = "SST-2 sentiment; logistic-regression probe on frozen embeddings (2000 train sentences), test accuracy"

    def _sentences(self) -> list[str]:
        from .data import read_sst2

        return read_sst2("train")[0]

    def evaluate(self, model: nn.Module | ZooModel, zm: ZooModel | None = None, *,
                 reference: nn.Module | None = None, limit: int | None = None,
                 split: str = "test") -> dict[str, float]:
        from .data import read_sst2

        check_limit(limit)
        check_split(self.name, split)
        model, zm = self.resolve(model, zm)
        assert zm.tokenizer is not None
        tr_x, tr_y = read_sst2("train")
        te_x, te_y = read_sst2(split)
        n_train = PROBE_TRAIN if limit is None else min(PROBE_TRAIN, limit)
        sub = fixed_subset(len(tr_x), n_train).tolist()
        train_texts, train_y = [tr_x[i] for i in sub], np.asarray([tr_y[i] for i in sub])
        te_x, te_y = te_x[:limit], te_y[:limit]
        if len(set(train_y.tolist())) < 2:
            raise DataError("the probe's training subset holds one class only; raise limit")
        emb_tr = embed(model, zm.tokenizer, train_texts)
        emb_te = embed(model, zm.tokenizer, te_x)
        pred = fit_probe(emb_tr.numpy(), train_y).predict(emb_te.numpy())
        out = {"accuracy": accuracy(torch.as_tensor(pred), torch.as_tensor(te_y)), "n": float(len(te_y)),
               "n_train": float(len(train_y))}
        if reference is not None:
            out["embedding_cosine"] = _fidelity(model, reference, zm, te_x, emb_te)
        return out


def fit_probe(x: np.ndarray, y: np.ndarray, c: float = PROBE_C) -> Any:
    """A deterministic L2 logistic regression (lbfgs) on ``x [N, H]``, labels ``y [N]``."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000).fit(x.astype(np.float64), y)
